//! Replay: decide logged requests again with another policy, in the real
//! filter, and say what would change: the share of traffic per cluster
//! before and after, where each request moves, who is newly denied or
//! allowed, what it costs, and whether every route keeps the constraints.
//!
//! Each request is rebuilt from its decision record (`docs/decision-logs.md`):
//! only the attributes the logging policy read are in it. A request whose
//! outcome depends on an attribute the record lacks (not read then, or
//! redacted) is counted as unknown with its reason, never guessed.

mod logs;
mod rebuild;
pub mod render;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context as _, Result};
use celroute::engine::{Decision, Outcome, PolicyDescription, PolicyDocument, StepResult};
use serde::Serialize;

use crate::policy::LoadedPolicy;
use crate::vm::FilterModule;

pub use logs::{read_logs, LogEntry, LogRead};
pub use rebuild::{rebuild, Rebuilt};

/// What happened to a request: routed to a cluster, or denied with a status.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum Fate {
    Routed(String),
    Denied(u16),
}

impl Fate {
    fn of(decision: &Decision) -> Fate {
        match &decision.outcome {
            Outcome::Route { cluster } => Fate::Routed(cluster.clone()),
            Outcome::Deny { status, .. } => Fate::Denied(*status),
        }
    }

    /// `gcp-europe-west4`, or `denied 403`.
    pub fn label(&self) -> String {
        match self {
            Fate::Routed(cluster) => cluster.clone(),
            Fate::Denied(status) => format!("denied {status}"),
        }
    }

    fn routed(&self) -> Option<&str> {
        match self {
            Fate::Routed(cluster) => Some(cluster),
            Fate::Denied(_) => None,
        }
    }
}

/// A policy to replay with: its text and where it came from.
pub struct PolicySource {
    pub path: PathBuf,
    pub text: String,
}

impl PolicySource {
    pub fn read(path: &std::path::Path) -> Result<PolicySource> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the policy {}", path.display()))?;
        Ok(PolicySource {
            path: path.to_path_buf(),
            text,
        })
    }
}

/// One policy in the report: its file, name and version.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyName {
    pub file: String,
    pub name: Option<String>,
    pub version: String,
}

/// One kind of change: requests moved from one outcome to another by the
/// same rule, with the first log line where it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub before: String,
    pub after: String,
    /// The rule that decided them after.
    pub rule: String,
    pub requests: u64,
    /// `FILE:LINE` of the first.
    pub first: String,
}

/// Per constraint rule of the new policy: how often it applied, and
/// whether every request it applied to was routed inside it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConstraintCheck {
    pub applied: u64,
    /// Routed requests whose cluster this rule's constraint excluded (must be 0).
    pub violated: u64,
}

/// What a replay found.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub policy: PolicyName,
    /// The policy the "before" side was decided with, or `None` for the
    /// decisions as logged.
    pub baseline: Option<PolicyName>,
    /// Log lines read, and of those the ones holding a decision record.
    pub lines: u64,
    pub records: u64,
    /// Lines without a decision record (requests celroute did not decide).
    pub without_record: u64,
    /// The policy versions the records were logged under, with their counts.
    pub logged_versions: BTreeMap<String, u64>,
    /// Requests decided again (records minus unknown).
    pub replayed: u64,
    /// Requests whose outcome cannot be known, by reason.
    pub unknown: BTreeMap<String, u64>,
    pub unknown_total: u64,
    /// Share of traffic before and after: outcome label -> requests.
    pub before: BTreeMap<String, u64>,
    pub after: BTreeMap<String, u64>,
    /// `before -> after -> requests`, every replayed request counted once.
    pub moves: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests whose outcome (cluster, or denial status) changed.
    pub changed: u64,
    /// Routed before, denied after; denied before, routed after.
    pub newly_denied: u64,
    pub newly_allowed: u64,
    /// Requests whose deciding rule changed though the outcome did not.
    pub rule_changed: u64,
    /// Each kind of change, in order of first appearance (at most 20 kinds).
    pub changes: Vec<Change>,
    /// Tokens logged in usage records of replayed requests, and their cost
    /// before and after (tokens at the logged price, and at the new policy's
    /// `price_per_1k_tokens` of the cluster they would go to; nothing for a
    /// request denied after).
    pub requests_with_usage: u64,
    pub tokens: u64,
    pub cost_before: f64,
    pub cost_after: f64,
    /// Every routed request checked against every constraint that applied.
    pub constraints: BTreeMap<String, ConstraintCheck>,
    pub constraint_violations: u64,
    /// Seconds the replay took, and requests decided per second.
    pub seconds: f64,
    pub per_second: f64,
}

impl ReplayReport {
    /// The share of replayed traffic whose outcome changed, in percent.
    pub fn shift_percent(&self) -> f64 {
        if self.replayed == 0 {
            return 0.0;
        }
        self.changed as f64 * 100.0 / self.replayed as f64
    }
}

/// Kinds of change listed in a report.
const CHANGE_KINDS: usize = 20;

/// Replays `log` with `policy`; the "before" side is `baseline`'s
/// decisions when given, else the logged ones.
pub fn replay(
    module: &FilterModule,
    log: &LogRead,
    policy: &PolicySource,
    baseline: Option<&PolicySource>,
) -> Result<ReplayReport> {
    let started = std::time::Instant::now();
    let mut new = load(module, policy)?;
    let mut old = baseline.map(|b| load(module, b)).transpose()?;
    let old_prices = baseline.map(prices).transpose()?;
    let prices = prices(policy)?;
    let mut report = ReplayReport {
        policy: name_of(policy, &new.description),
        baseline: old
            .as_ref()
            .zip(baseline)
            .map(|(loaded, source)| name_of(source, &loaded.description)),
        lines: log.lines,
        records: log.entries.len() as u64,
        without_record: log.without_record,
        logged_versions: BTreeMap::new(),
        replayed: 0,
        unknown: BTreeMap::new(),
        unknown_total: 0,
        before: BTreeMap::new(),
        after: BTreeMap::new(),
        moves: BTreeMap::new(),
        changed: 0,
        newly_denied: 0,
        newly_allowed: 0,
        rule_changed: 0,
        changes: Vec::new(),
        requests_with_usage: 0,
        tokens: 0,
        cost_before: 0.0,
        cost_after: 0.0,
        constraints: BTreeMap::new(),
        constraint_violations: 0,
        seconds: 0.0,
        per_second: 0.0,
    };
    for (name, kind) in new.description.rules.iter().map(|r| (&r.name, &r.kind)) {
        if kind == "require" {
            report.constraints.insert(name.clone(), Default::default());
        }
    }
    // The live state each policy holds now, restored only when it changes.
    type Live = Option<serde_json::Map<String, serde_json::Value>>;
    let (mut live_new, mut live_old): (Live, Live) = (None, None);
    for entry in &log.entries {
        *report
            .logged_versions
            .entry(entry.policy_version())
            .or_default() += 1;
        // Unknown when it cannot be rebuilt, or either policy reads what
        // its record lacks.
        let rebuilt = rebuild(&entry.record).and_then(|rebuilt| {
            let missing = (rebuilt.missing_for(&new.description)).or_else(|| {
                old.as_ref()
                    .and_then(|o| rebuilt.missing_for(&o.description))
            });
            missing.map_or(Ok(rebuilt), Err)
        });
        let rebuilt = match rebuilt {
            Ok(rebuilt) => rebuilt,
            Err(reason) => {
                *report.unknown.entry(reason).or_default() += 1;
                report.unknown_total += 1;
                continue;
            }
        };
        restore_live(&mut new, &rebuilt, &mut live_new)
            .map_err(|e| anyhow!("{}: {e:#}", entry.at))?;
        if let Some(old) = &mut old {
            restore_live(old, &rebuilt, &mut live_old)
                .map_err(|e| anyhow!("{}: {e:#}", entry.at))?;
        }
        let after = new.evaluate(&rebuilt.spec).map_err(|e| {
            anyhow!(
                "{}: replaying with {}: {e}",
                entry.at,
                policy.path.display()
            )
        })?;
        let (before, before_rule) = match &mut old {
            Some(old) => {
                let decision = old
                    .evaluate(&rebuilt.spec)
                    .map_err(|e| anyhow!("{}: replaying with the baseline: {e}", entry.at))?;
                (Fate::of(&decision.decision), decision.decision.rule)
            }
            None => (entry.fate()?, entry.rule()),
        };
        report.replayed += 1;
        check_constraints(&after.decision, &mut report);
        let after_rule = after.decision.rule.clone();
        let after = Fate::of(&after.decision);
        *report.before.entry(before.label()).or_default() += 1;
        *report.after.entry(after.label()).or_default() += 1;
        *report
            .moves
            .entry(before.label())
            .or_default()
            .entry(after.label())
            .or_default() += 1;
        if before != after {
            report.changed += 1;
            match (before.routed(), after.routed()) {
                (Some(_), None) => report.newly_denied += 1,
                (None, Some(_)) => report.newly_allowed += 1,
                _ => {}
            }
            let (before, after) = (before.label(), after.label());
            let kind = (report.changes.iter())
                .position(|c| c.before == before && c.after == after && c.rule == after_rule);
            match kind {
                Some(i) => report.changes[i].requests += 1,
                None if report.changes.len() < CHANGE_KINDS => report.changes.push(Change {
                    before,
                    after,
                    rule: after_rule,
                    requests: 1,
                    first: entry.at.clone(),
                }),
                None => {}
            }
        } else if before_rule != after_rule {
            report.rule_changed += 1;
        }
        if let Some(usage) = entry.usage.as_ref().filter(|u| u.reported) {
            let tokens = usage.tokens;
            report.requests_with_usage += 1;
            report.tokens += tokens;
            report.cost_before += match (&old_prices, before.routed()) {
                (Some(prices), Some(cluster)) => cost(tokens, prices, cluster),
                (Some(_), None) => 0.0,
                (None, _) => usage.cost,
            };
            if let Some(cluster) = after.routed() {
                report.cost_after += cost(tokens, &prices, cluster);
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    let decided = report.replayed * if old.is_some() { 2 } else { 1 };
    report.per_second = decided as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Gives a policy that reads live state the live values `rebuilt` was
/// decided under, unless it holds them already.
fn restore_live(
    policy: &mut LoadedPolicy<'_>,
    rebuilt: &Rebuilt,
    current: &mut Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<()> {
    if !policy.description.reads_live || current.as_ref() == rebuilt.live.as_ref() {
        return Ok(());
    }
    let empty = serde_json::Map::new();
    let live = rebuilt.live.as_ref().unwrap_or(&empty);
    let clusters = policy.description.clusters.clone();
    crate::scripted::replace_live(policy, &clusters, live)?;
    *current = Some(live.clone());
    Ok(())
}

/// Checks a replayed route against each constraint that applied to it:
/// the cluster must be among those it left.
fn check_constraints(decision: &Decision, report: &mut ReplayReport) {
    let Some(trace) = &decision.trace else {
        return;
    };
    let cluster = decision.cluster();
    for step in &trace.steps {
        if step.result != StepResult::Constrained {
            continue;
        }
        let check = report.constraints.entry(step.rule.clone()).or_default();
        check.applied += 1;
        if cluster.is_some_and(|c| step.excluded.iter().any(|e| e == c)) {
            check.violated += 1;
            report.constraint_violations += 1;
        }
    }
}

fn load<'m>(module: &'m FilterModule, source: &PolicySource) -> Result<LoadedPolicy<'m>> {
    LoadedPolicy::load(module, source.text.as_bytes())
        .map_err(|e| anyhow!("{}: {e}", source.path.display()))
}

fn name_of(source: &PolicySource, description: &PolicyDescription) -> PolicyName {
    PolicyName {
        file: source.path.display().to_string(),
        name: description.name.clone(),
        version: description.version.clone(),
    }
}

/// Each cluster's `price_per_1k_tokens` in the policy's inventory.
fn prices(source: &PolicySource) -> Result<BTreeMap<String, f64>> {
    let document = PolicyDocument::parse(&source.text)
        .map_err(|e| anyhow!("{}: {e}", source.path.display()))?;
    Ok(document
        .clusters
        .iter()
        .filter_map(|(name, attributes)| {
            let price = attributes.get("price_per_1k_tokens")?.as_f64()?;
            Some((name.clone(), price))
        })
        .collect())
}

fn cost(tokens: u64, prices: &BTreeMap<String, f64>, cluster: &str) -> f64 {
    tokens as f64 * prices.get(cluster).copied().unwrap_or(0.0) / 1000.0
}
