//! What a test case expects of a decision, and decisions in one line.

use celroute::engine::{Decision, Outcome};
use serde::{Deserialize, Serialize};

/// What a case expects: `cluster` or `deny`, optionally the deciding `rule`
/// and the denial `message`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where a retry would go (the policy's `options.fallback_header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl Expectation {
    pub fn describe(&self) -> String {
        let mut out = match (&self.cluster, self.deny) {
            (Some(c), _) => format!("route to {c}"),
            (None, Some(s)) => format!("deny {s}"),
            (None, None) => "nothing (the case names neither cluster nor deny)".into(),
        };
        if let Some(rule) = &self.rule {
            out.push_str(&format!(" by rule {rule}"));
        }
        if let Some(fallback) = &self.fallback {
            out.push_str(&format!(", retries on {fallback}"));
        }
        if let Some(message) = &self.message {
            out.push_str(&format!(" with message {message:?}"));
        }
        out
    }
}

/// A decision in one line: `route to X by rule R` / `deny 403 by rule R ("message")`.
pub fn describe_decision(decision: &Decision) -> String {
    match &decision.outcome {
        Outcome::Route { cluster } => match &decision.fallback {
            Some(fallback) => format!(
                "route to {cluster} by rule {}, retries on {fallback}",
                decision.rule
            ),
            None => format!("route to {cluster} by rule {}", decision.rule),
        },
        Outcome::Deny { status, message } => {
            format!(
                "deny {status} by rule {} with message {message:?}",
                decision.rule
            )
        }
    }
}
