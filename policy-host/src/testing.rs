//! Policy test files: discovery, running each case through the filter,
//! comparing with the expectation, and rule coverage.
//!
//! ```yaml
//! policy: eu-residency-cost.yaml        # relative to this file
//! cases:
//!   - name: EU users stay in the EU
//!     request: {headers: {x-tenant: acme, x-user-region: eu, x-priority: latency}}
//!     expect: {cluster: gcp-europe-west4, rule: first-candidate}
//!   - name: a tenant is required
//!     expect: {deny: 403, rule: block-unknown-tenant}
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use celroute::engine::{Decision, Outcome, PolicyDescription, StepResult};
use serde::{Deserialize, Serialize};

pub use crate::expect::{describe_decision, Expectation};
use crate::policy::LoadedPolicy;
use crate::request::RequestSpec;
use crate::scripted::{self, LiveSpec, Step};
use crate::vm::FilterModule;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The policy under test, relative to the test file.
    pub policy: String,
    #[serde(default)]
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// Live values the case starts from (cluster -> field -> value).
    #[serde(default)]
    pub live: Option<LiveSpec>,
    /// Steps run before the case's request (see `scripted.rs`).
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub request: RequestSpec,
    pub expect: Expectation,
}

impl TestCase {
    /// A case with live state or steps runs in a VM of its own, on
    /// virtual time, so that nothing carries over between cases.
    fn scripted(&self) -> bool {
        self.live.is_some() || !self.steps.is_empty()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub expected: Expectation,
    /// The filter's decision, when it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Why the case failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Rules of one policy and whether any case made them take effect.
#[derive(Debug, Clone, Serialize)]
pub struct RuleCoverage {
    pub rule: String,
    pub kind: String,
    pub covered: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    pub file: PathBuf,
    pub policy: PathBuf,
    /// A problem with the file itself (unreadable, invalid, policy rejected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub cases: Vec<CaseResult>,
    pub coverage: Vec<RuleCoverage>,
    /// The loaded policy as the filter described it.
    #[serde(skip)]
    pub description: Option<PolicyDescription>,
}

impl FileResult {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed).count()
    }
    /// Failed cases, plus one for a file-level error.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count() + usize::from(self.error.is_some())
    }
    /// Percentage of rules covered (100 for a policy without rules).
    pub fn coverage_percent(&self) -> f64 {
        if self.coverage.is_empty() {
            return 100.0;
        }
        let covered = self.coverage.iter().filter(|r| r.covered).count();
        100.0 * covered as f64 / self.coverage.len() as f64
    }
}

/// Test files under `paths`: files as given, directories searched recursively
/// for `*.test.yaml`, `*.test.yml` and `*.test.json`, in name order.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            walk(path, &mut files)?;
            if files.len() == before {
                bail!(
                    "no test files under {} (test files end in .test.yaml, .test.yml or .test.json)",
                    path.display()
                );
            }
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("{}: no such file or directory", path.display());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            walk(&entry, out)?;
        } else if let Some(name) = entry.file_name().and_then(|n| n.to_str()) {
            if [".test.yaml", ".test.yml", ".test.json"]
                .iter()
                .any(|suffix| name.ends_with(suffix))
            {
                out.push(entry);
            }
        }
    }
    Ok(())
}

/// Runs every case of one test file through the filter.
pub fn run_file(module: &FilterModule, file: &Path) -> FileResult {
    let mut result = FileResult {
        file: file.to_path_buf(),
        policy: PathBuf::new(),
        error: None,
        cases: Vec::new(),
        coverage: Vec::new(),
        description: None,
    };
    let parsed = std::fs::read_to_string(file)
        .with_context(|| format!("reading {}", file.display()))
        .and_then(|text| {
            serde_yaml::from_str::<TestFile>(&text)
                .with_context(|| format!("{} is not a valid test file", file.display()))
        });
    let tests = match parsed {
        Ok(tests) => tests,
        Err(e) => {
            result.error = Some(format!("{e:#}"));
            return result;
        }
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    result.policy = dir.join(&tests.policy);
    let text = match std::fs::read(&result.policy) {
        Ok(text) => text,
        Err(e) => {
            result.error = Some(format!("reading policy {}: {e}", result.policy.display()));
            return result;
        }
    };
    let mut policy = match LoadedPolicy::load(module, &text) {
        Ok(policy) => policy,
        Err(e) => {
            result.error = Some(format!(
                "policy {} did not load:\n{e}",
                result.policy.display()
            ));
            return result;
        }
    };
    result.coverage = policy
        .description
        .rules
        .iter()
        .map(|r| RuleCoverage {
            rule: r.name.clone(),
            kind: r.kind.clone(),
            covered: false,
        })
        .collect();
    result.description = Some(policy.description.clone());
    for case in &tests.cases {
        let outcome = if case.scripted() {
            run_scripted_case(module, &text, case, &mut result.coverage)
        } else {
            run_case(&mut policy, case)
        };
        if let Some(decision) = &outcome.decision {
            mark_coverage(&mut result.coverage, decision);
        }
        result.cases.push(outcome);
    }
    result
}

fn new_result(case: &TestCase) -> CaseResult {
    CaseResult {
        name: case.name.clone(),
        passed: false,
        expected: case.expect.clone(),
        decision: None,
        failure: None,
    }
}

fn run_case(policy: &mut LoadedPolicy<'_>, case: &TestCase) -> CaseResult {
    check_request(policy, &case.request, &case.expect, new_result(case))
}

/// Runs a case with live state or steps in a VM of its own.
fn run_scripted_case(
    module: &FilterModule,
    policy_text: &[u8],
    case: &TestCase,
    coverage: &mut [RuleCoverage],
) -> CaseResult {
    let mut result = new_result(case);
    let mut policy = match LoadedPolicy::load_in(module, policy_text, scripted::environment()) {
        Ok(p) => p,
        Err(e) => {
            result.failure = Some(format!("the policy did not load: {e}"));
            return result;
        }
    };
    if let Some(live) = &case.live {
        if let Err(e) = scripted::set_live(&mut policy, live) {
            result.failure = Some(format!("live: {e:#}"));
            return result;
        }
    }
    for (i, step) in case.steps.iter().enumerate() {
        let failed = |why: String| format!("step {}: {why}", i + 1);
        if let Err(e) = scripted::check(step) {
            result.failure = Some(failed(e.to_string()));
            return result;
        }
        let Some(request) = &step.request else {
            if let Err(e) = scripted::apply(&mut policy, step) {
                result.failure = Some(failed(format!("{e:#}")));
                return result;
            }
            continue;
        };
        for n in 0..step.repeat.unwrap_or(1) {
            let checked = match &step.expect {
                Some(expect) => check_request(&mut policy, request, expect, new_result(case)),
                None => match policy.evaluate(request) {
                    Ok(e) => CaseResult {
                        passed: true,
                        decision: Some(e.decision),
                        ..new_result(case)
                    },
                    Err(e) => CaseResult {
                        failure: Some(e.to_string()),
                        ..new_result(case)
                    },
                },
            };
            if let Some(decision) = &checked.decision {
                mark_coverage(coverage, decision);
            }
            if !checked.passed {
                let why = checked.failure.unwrap_or_default();
                result.failure = Some(failed(format!("request {}: {why}", n + 1)));
                result.decision = checked.decision;
                return result;
            }
        }
    }
    check_request(&mut policy, &case.request, &case.expect, result)
}

/// Sends one request and compares its decision with `expect`.
fn check_request(
    policy: &mut LoadedPolicy<'_>,
    request: &RequestSpec,
    expect: &Expectation,
    mut result: CaseResult,
) -> CaseResult {
    if expect.cluster.is_some() == expect.deny.is_some() {
        result.failure = Some("expect names exactly one of cluster or deny".into());
        return result;
    }
    let evaluation = match policy.evaluate(request) {
        Ok(e) => e,
        Err(e) => {
            result.failure = Some(e.to_string());
            return result;
        }
    };
    let decision = evaluation.decision;
    let outcome_ok = match (&decision.outcome, &expect.cluster, expect.deny) {
        (Outcome::Route { cluster }, Some(want), _) => cluster == want,
        (Outcome::Deny { status, .. }, None, Some(want)) => *status == want,
        _ => false,
    };
    let rule_ok = expect.rule.as_ref().is_none_or(|r| *r == decision.rule);
    let message_ok = match (&expect.message, &decision.outcome) {
        (None, _) => true,
        (Some(want), Outcome::Deny { message, .. }) => message == want,
        (Some(_), Outcome::Route { .. }) => false,
    };
    let fallback_ok = expect.fallback.is_none() || expect.fallback == decision.fallback;
    result.passed = outcome_ok && rule_ok && message_ok && fallback_ok;
    if !result.passed {
        result.failure = Some(format!(
            "expected  {}\ngot       {}",
            expect.describe(),
            describe_decision(&decision)
        ));
    }
    result.decision = Some(decision);
    result
}

/// A rule is covered when it took effect in some case: a deny that denied, a
/// require that excluded a cluster, a selection that selected, or the rule
/// whose constraint left no candidate.
fn mark_coverage(coverage: &mut [RuleCoverage], decision: &Decision) {
    let mut mark = |name: &str| {
        if let Some(rule) = coverage.iter_mut().find(|r| r.rule == name) {
            rule.covered = true;
        }
    };
    mark(&decision.rule);
    if let Some(trace) = &decision.trace {
        for step in &trace.steps {
            let took_effect = match &step.result {
                StepResult::Denied | StepResult::Selected { .. } => true,
                StepResult::Constrained => !step.excluded.is_empty(),
                StepResult::NotMatched | StepResult::FellThrough => false,
            };
            if took_effect {
                mark(&step.rule);
            }
        }
    }
}
