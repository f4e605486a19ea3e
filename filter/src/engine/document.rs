//! The policy document as users write it (YAML or JSON), before validation.
//!
//! Every struct denies unknown fields: a misspelt key (`requires:`) must be a
//! load error, never a silently ignored rule.

use indexmap::IndexMap;
use serde::Deserialize;

use super::error::{PolicyError, PolicyErrors};

/// A policy document: the cluster inventory, the rules and the options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// Optional human name of the policy, shown in logs and decisions.
    #[serde(default)]
    pub name: Option<String>,
    /// Envoy cluster name -> attributes visible to CEL as `cluster.*`.
    pub clusters: IndexMap<String, IndexMap<String, serde_json::Value>>,
    /// Rules, in the order they are tried.
    #[serde(default)]
    pub rules: Vec<RuleDocument>,
    /// Cluster used when no selection rule picks one (if it survives the constraints).
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub options: OptionsDocument,
    /// Live cluster state: staleness, circuit breaker, signals feed.
    #[serde(default)]
    pub live: Option<LiveDocument>,
    /// Token, cost and egress counting (see `docs/inference.md`).
    #[serde(default)]
    pub usage: Option<UsageDocument>,
    /// Spend budgets per key and window, visible to CEL as `budget.<name>`.
    #[serde(default)]
    pub budgets: Vec<BudgetDocument>,
}

/// One entry of `budgets:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetDocument {
    pub name: String,
    /// `tokens`, `cost` or `egress_bytes`.
    pub unit: String,
    pub limit: f64,
    /// `minute`, `hour`, `day` or `month`.
    pub window: String,
    #[serde(default)]
    pub key_header: Option<String>,
    /// The clusters whose usage counts; all when absent.
    #[serde(default)]
    pub clusters: Option<Vec<String>>,
}

/// `usage:`: count the tokens, cost and bytes of each routed request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageDocument {
    /// Request header whose value keys a second set of counters (a tenant).
    #[serde(default)]
    pub key_header: Option<String>,
}

/// `live:`: how live cluster state is kept (see `docs/live-signals.md`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveDocument {
    /// Observed and reported values older than this are absent (`10s`).
    #[serde(default)]
    pub stale_after: Option<String>,
    /// Named values a feed supplies beyond the built-in fields.
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub breaker: Option<BreakerDocument>,
    #[serde(default)]
    pub feed: Option<FeedDocument>,
    #[serde(default)]
    pub scrape: Option<ScrapeDocument>,
}

/// `live.scrape`: model servers' Prometheus `/metrics`, polled per cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeDocument {
    pub clusters: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub every: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    /// Live field -> metric names read for it, replacing the defaults.
    #[serde(default)]
    pub metrics: Option<indexmap::IndexMap<String, Vec<String>>>,
}

/// `live.breaker`: when a cluster's circuit breaker opens, and for how long.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerDocument {
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    #[serde(default)]
    pub cool_down: Option<String>,
    /// Path of the request that probes a cluster after its cool-down.
    #[serde(default)]
    pub probe_path: Option<String>,
}

/// `live.feed`: a signals document polled from an Envoy cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedDocument {
    pub cluster: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub every: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
}

/// One rule. Exactly one of `require`, `deny`, `prefer`, `order_by`, `split` is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDocument {
    pub name: String,
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub require: Option<String>,
    #[serde(default)]
    pub deny: Option<DenyDocument>,
    #[serde(default)]
    pub prefer: Option<Vec<String>>,
    #[serde(default)]
    pub order_by: Option<String>,
    /// A weighted split: each candidate's weight (a CEL number).
    #[serde(default)]
    pub split: Option<String>,
    /// With `split`: the key that keeps requests on one cluster (a CEL
    /// string); default `request.id`, a different cluster per request.
    #[serde(default)]
    pub sticky_by: Option<String>,
    /// With `order_by`: pick the highest value instead of the lowest.
    #[serde(default)]
    pub descending: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyDocument {
    #[serde(default = "default_deny_status")]
    pub status: u16,
    #[serde(default)]
    pub message: Option<String>,
}

fn default_deny_status() -> u16 {
    403
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsDocument {
    /// Request header that carries the chosen cluster to Envoy's `cluster_header` route.
    #[serde(default)]
    pub routing_header: Option<String>,
    /// Response header naming the chosen cluster, deciding rule and policy version; off when absent.
    #[serde(default)]
    pub decision_header: Option<String>,
    /// Request header that carries the fallback cluster (the policy's next
    /// choice) for Envoy's retries; off when absent.
    #[serde(default)]
    pub fallback_header: Option<String>,
    /// `trace`, `debug`, `info`, `warn`, `error` or `off`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Status of the denial sent when the constraints leave no cluster.
    #[serde(default)]
    pub no_candidate_status: Option<u16>,
    /// Decisions kept in the per-worker LRU decision cache; 0 turns it off.
    #[serde(default)]
    pub decision_cache_size: Option<usize>,
    /// The largest request body a policy that reads `request.body` waits
    /// for; a larger one is answered 413.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Raises or lowers the limits on what the policy may cost.
    #[serde(default)]
    pub limits: Option<LimitsDocument>,
    /// Hands each decision to Envoy's access log (docs/decision-logs.md);
    /// off when absent.
    #[serde(default)]
    pub decision_log: Option<DecisionLogDocument>,
}

/// `options.decision_log`: present turns decision records on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogDocument {
    /// Attributes whose values are never recorded, such as
    /// `request.headers['authorization']` or `source.address`.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// `options.limits`: each absent key keeps its default (see `limits.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsDocument {
    #[serde(default)]
    pub max_rules: Option<u64>,
    #[serde(default)]
    pub max_clusters: Option<u64>,
    #[serde(default)]
    pub max_expression_length: Option<u64>,
    #[serde(default)]
    pub max_expression_depth: Option<u64>,
    #[serde(default)]
    pub max_expression_cost: Option<u64>,
    #[serde(default)]
    pub evaluation_budget: Option<u64>,
}

impl PolicyDocument {
    /// Parses a policy from YAML or JSON (JSON is valid YAML; a document that
    /// starts with `{` is read as JSON for JSON-shaped error messages).
    pub fn parse(text: &str) -> Result<PolicyDocument, PolicyErrors> {
        if text.trim().is_empty() {
            return Err(PolicyError::new("policy", "the policy document is empty").into());
        }
        if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| {
                PolicyError::new(
                    "policy",
                    format!(
                        "{}line {}, column {}: {}",
                        match e.classify() {
                            serde_json::error::Category::Data => "",
                            _ => "invalid JSON at ",
                        },
                        e.line(),
                        e.column(),
                        strip_position(&e.to_string())
                    ),
                )
                .into()
            })
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let message = match e.location() {
                    Some(at) => format!(
                        "line {}, column {}: {}",
                        at.line(),
                        at.column(),
                        strip_position(&e.to_string())
                    ),
                    None => e.to_string(),
                };
                PolicyError::new("policy", message).into()
            })
        }
    }
}

/// serde's messages end in " at line L column C"; the position is reported
/// separately. Its parsers stop at 128 levels of nesting: say so.
fn strip_position(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    if message == "recursion limit exceeded" {
        return format!("{message}: a policy's YAML or JSON nests at most 128 levels");
    }
    message.to_string()
}
