//! Rendering results for people (text), programs (JSON) and CI (JUnit XML),
//! each a [`Reporter`]; and the coverage threshold as a typed failure.

use std::fmt::Write as _;

use celroute::engine::{Decision, PolicyDescription, StepResult};

use crate::testing::{describe_decision, FileResult};

/// Renders the results of a test run.
pub trait Reporter {
    fn render(&self, results: &[FileResult]) -> String;
}

/// Text for people, with rule coverage when asked.
pub struct Human {
    pub coverage: bool,
}

/// One JSON document for programs.
pub struct Json;

/// JUnit XML for CI systems.
pub struct Junit;

impl Reporter for Human {
    fn render(&self, results: &[FileResult]) -> String {
        human(results, self.coverage)
    }
}

impl Reporter for Json {
    fn render(&self, results: &[FileResult]) -> String {
        json(results)
    }
}

impl Reporter for Junit {
    fn render(&self, results: &[FileResult]) -> String {
        junit(results)
    }
}

/// A policy whose rule coverage is below the threshold, and the rules no
/// case made take effect.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: rule coverage {percent:.0}% is below the threshold {threshold}% (never took effect: {})", policy.display(), uncovered.join(", "))]
pub struct CoverageBelow {
    pub policy: std::path::PathBuf,
    pub percent: f64,
    pub threshold: f64,
    pub uncovered: Vec<String>,
}

/// Every policy (that loaded) whose coverage is below `threshold`.
pub fn coverage_below(results: &[FileResult], threshold: f64) -> Vec<CoverageBelow> {
    results
        .iter()
        .filter(|r| r.error.is_none() && r.coverage_percent() < threshold)
        .map(|r| CoverageBelow {
            policy: r.policy.clone(),
            percent: r.coverage_percent(),
            threshold,
            uncovered: (r.coverage.iter())
                .filter(|c| !c.covered)
                .map(|c| c.rule.clone())
                .collect(),
        })
        .collect()
}

/// The rule-by-rule explanation of a decision, one line a rule, in policy
/// order; rules the decision did not need are "not reached".
pub fn explain(decision: &Decision, description: &PolicyDescription) -> Vec<String> {
    let width = description
        .rules
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut lines = Vec::new();
    let steps = decision
        .trace
        .as_ref()
        .map(|t| t.steps.as_slice())
        .unwrap_or(&[]);
    for rule in &description.rules {
        let what = match steps.iter().find(|s| s.rule == rule.name) {
            None => "not reached".to_string(),
            Some(step) => {
                let mut what = match &step.result {
                    StepResult::NotMatched => "not matched".to_string(),
                    StepResult::Constrained if step.excluded.is_empty() => {
                        "constraint applied, excluded nothing".to_string()
                    }
                    StepResult::Constrained => {
                        format!("constraint applied, excluded {}", step.excluded.join(", "))
                    }
                    StepResult::Denied => "denied".to_string(),
                    StepResult::Selected { cluster } => format!("selected {cluster}"),
                    StepResult::FellThrough => {
                        "matched, but none of its clusters is a candidate: fell through".to_string()
                    }
                };
                for error in &step.errors {
                    what.push_str(&format!("\n{:width$}     error: {error}", ""));
                }
                what
            }
        };
        lines.push(format!("{:<width$}  {:<8}  {what}", rule.name, rule.kind));
    }
    if let Some(trace) = &decision.trace {
        lines.push(format!(
            "candidates after constraints: {}",
            if trace.candidates.is_empty() {
                "none".to_string()
            } else {
                trace.candidates.join(", ")
            }
        ));
    }
    lines
}

/// `cargo test`-like text: a line a case, diffs for failures, coverage, summary.
pub fn human(results: &[FileResult], coverage: bool) -> String {
    let mut out = String::new();
    for file in results {
        let description = &file.description;
        let _ = writeln!(
            out,
            "{} (policy {})",
            file.file.display(),
            file.policy.display()
        );
        if let Some(error) = &file.error {
            let _ = writeln!(out, "  ERROR {}", indent(error, 8));
        }
        for case in &file.cases {
            if case.passed {
                let _ = writeln!(out, "  ok    {}", case.name);
                continue;
            }
            let _ = writeln!(out, "  FAIL  {}", case.name);
            if let Some(failure) = &case.failure {
                let _ = writeln!(out, "        {}", indent(failure, 8));
            }
            if let (Some(decision), Some(description)) = (&case.decision, description) {
                let _ = writeln!(out, "        trace");
                for line in explain(decision, description) {
                    let _ = writeln!(out, "          {}", indent(&line, 10));
                }
            }
        }
        if coverage && file.error.is_none() {
            let covered = file.coverage.iter().filter(|r| r.covered).count();
            let _ = writeln!(
                out,
                "  coverage {}/{} rules ({:.0}%)",
                covered,
                file.coverage.len(),
                file.coverage_percent()
            );
            let missed: Vec<&str> = file
                .coverage
                .iter()
                .filter(|r| !r.covered)
                .map(|r| r.rule.as_str())
                .collect();
            if !missed.is_empty() {
                let _ = writeln!(out, "  never took effect: {}", missed.join(", "));
            }
        }
    }
    let passed: usize = results.iter().map(FileResult::passed).sum();
    let failed: usize = results.iter().map(FileResult::failed).sum();
    let _ = writeln!(out, "{passed} passed, {failed} failed");
    out
}

fn indent(text: &str, by: usize) -> String {
    text.replace('\n', &format!("\n{:by$}", ""))
}

pub fn json(results: &[FileResult]) -> String {
    let passed: usize = results.iter().map(FileResult::passed).sum();
    let failed: usize = results.iter().map(FileResult::failed).sum();
    let files: Vec<serde_json::Value> = results
        .iter()
        .map(|f| {
            let mut value = serde_json::to_value(f).unwrap_or_default();
            value["coverage_percent"] = serde_json::json!(f.coverage_percent());
            value
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "passed": passed,
        "failed": failed,
        "files": files,
    }))
    .unwrap_or_default()
}

pub fn junit(results: &[FileResult]) -> String {
    let tests: usize = results
        .iter()
        .map(|f| f.cases.len() + usize::from(f.error.is_some()))
        .sum();
    let failures: usize = results.iter().map(FileResult::failed).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"policy-host\" tests=\"{tests}\" failures=\"{failures}\">"
    );
    for file in results {
        let name = xml(&file.file.display().to_string());
        let _ = writeln!(
            out,
            "  <testsuite name=\"{name}\" tests=\"{}\" failures=\"{}\">",
            file.cases.len() + usize::from(file.error.is_some()),
            file.failed()
        );
        if let Some(error) = &file.error {
            let _ = writeln!(
                out,
                "    <testcase name=\"(load)\" classname=\"{name}\"><failure message=\"{}\">{}</failure></testcase>",
                xml(error.lines().next().unwrap_or_default()),
                xml(error)
            );
        }
        for case in &file.cases {
            let case_name = xml(&case.name);
            if case.passed {
                let _ = writeln!(
                    out,
                    "    <testcase name=\"{case_name}\" classname=\"{name}\"/>"
                );
            } else {
                let failure = case.failure.clone().unwrap_or_default();
                let got = case
                    .decision
                    .as_ref()
                    .map(describe_decision)
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    <testcase name=\"{case_name}\" classname=\"{name}\"><failure message=\"{}\">{}</failure></testcase>",
                    xml(&format!("expected {}; got {got}", case.expected.describe())),
                    xml(&failure)
                );
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}

fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' && c != '\r' => {}
            c => out.push(c),
        }
    }
    out
}
