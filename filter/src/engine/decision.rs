//! What a decision is: its outcome, the rule that made it, the errors met and
//! an optional rule-by-rule trace. One type for the filter's logs, the
//! decision header, the decision cache, policy-host and test diffs; it
//! depends on nothing else in the engine.

use serde::{Deserialize, Serialize};

/// The outcome of one request's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Outcome {
    Route { cluster: String },
    Deny { status: u16, message: String },
}

/// A decision: the outcome, the rule that made it, and what went wrong on the way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The deciding rule, or `default`, `first-candidate` when no rule chose.
    pub rule: String,
    /// Where a retry may go when the chosen cluster fails: the policy's
    /// next choice among the candidates the constraints left (only with
    /// `options.fallback_header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Evaluation errors met (each names the rule and the cluster).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Rule-by-rule account, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

/// Rule-by-rule account of a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Trace {
    pub steps: Vec<TraceStep>,
    /// Candidates left after the constraints.
    pub candidates: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceStep {
    pub rule: String,
    pub result: StepResult,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    /// `when` was false: the rule did not apply.
    NotMatched,
    /// A `require` applied (possibly excluding clusters).
    Constrained,
    /// A `deny` applied.
    Denied,
    /// A selection rule chose this cluster.
    Selected { cluster: String },
    /// A selection rule applied but none of its clusters survived.
    FellThrough,
}

impl Decision {
    /// The chosen cluster, if routed.
    pub fn cluster(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Route { cluster } => Some(cluster),
            Outcome::Deny { .. } => None,
        }
    }

    /// JSON body of a denial, in the OpenAI API's error shape (see [`error_body`]).
    pub fn deny_body(&self) -> String {
        match &self.outcome {
            Outcome::Deny { status, message } => {
                error_body(*status, "policy_denied", message, Some(&self.rule))
            }
            Outcome::Route { .. } => String::new(),
        }
    }
}

/// A reply celroute makes itself, in the error shape of the OpenAI API (which
/// most inference clients and SDKs read):
/// `{"error":{"message","type","code","param","rule","status"}}`. `type`
/// follows the status (`rate_limit_error` for 429, so that SDKs raise their
/// rate-limit exception); `rule` is the deciding rule, when there is one.
pub fn error_body(status: u16, code: &str, message: &str, rule: Option<&str>) -> String {
    let kind = match status {
        400 | 413 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 | 451 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "celroute_error",
    };
    let mut error = serde_json::json!({
        "message": message,
        "type": kind,
        "code": code,
        "param": null,
        "status": status,
    });
    if let (Some(rule), Some(map)) = (rule, error.as_object_mut()) {
        map.insert("rule".into(), rule.into());
    }
    serde_json::json!({ "error": error }).to_string()
}
