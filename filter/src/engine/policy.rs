//! The compiled policy: immutable once loaded, what the decision path reads.
//! Its clusters, rules and their compiled expressions, its options and
//! limits, and what tools are told about it.

use std::sync::Arc;

use cel::{Env, Value};

use super::attributes::AttributeNeeds;
use super::limits::Limits;
use super::live::{LiveFields, LiveOptions, Reads};

/// Default request header that carries the chosen cluster to Envoy.
pub const DEFAULT_ROUTING_HEADER: &str = "x-celroute-cluster";
/// Default status when the constraints leave no cluster (451: Unavailable For Legal Reasons).
pub const DEFAULT_NO_CANDIDATE_STATUS: u16 = 451;
/// Largest `options.decision_cache_size` accepted.
pub const MAX_DECISION_CACHE_SIZE: usize = 100_000;

/// Names the engine uses for decisions no rule made; rules may not take them.
pub(crate) const RESERVED_RULE_NAMES: [&str; 4] =
    ["default", "first-candidate", "no-candidate", "request-body"];

/// Log verbosity, set by the policy's `options.log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Off,
}

/// A validated policy with its CEL programs compiled.
pub struct Policy {
    pub(crate) name: Option<String>,
    pub(crate) env: Arc<Env>,
    pub(crate) clusters: Vec<Cluster>,
    /// `clusters` as CEL sees it: name -> attributes (converted once).
    pub(crate) clusters_value: Box<dyn cel::common::value::Val>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) default: Option<usize>,
    pub(crate) needs: AttributeNeeds,
    /// The live cluster fields this policy could name (`cluster.live.*`).
    pub(crate) live_fields: LiveFields,
    /// How live state is kept: staleness, breaker, feed.
    pub(crate) live_options: LiveOptions,
    /// Some expression reads live cluster state: decisions depend on the
    /// snapshot as well as on the request.
    pub(crate) reads_live: bool,
    /// The live fields its expressions name; `None` when one may read any
    /// (a whole `cluster.live` or cluster value).
    pub(crate) live_read: Option<std::collections::BTreeSet<String>>,
    /// Which attribute roots to bind per request (those the policy reads).
    pub(crate) bound_roots: [bool; 4],
    pub(crate) routing_header: String,
    pub(crate) decision_header: Option<String>,
    /// Request header that carries the fallback cluster, when enabled.
    pub(crate) fallback_header: Option<String>,
    pub(crate) log_level: LogLevel,
    pub(crate) no_candidate_status: u16,
    /// `options.max_body_bytes`.
    pub(crate) max_body_bytes: u64,
    /// `usage:`, when the policy counts usage.
    pub(crate) usage: Option<UsageOptions>,
    /// `budgets:`.
    pub(crate) budgets: Vec<super::spending::SpendBudget>,
    /// `options.decision_log`, when decisions are recorded.
    pub(crate) decision_log: Option<super::decision_log::DecisionLog>,
    pub(crate) version: String,
    pub(crate) programs: usize,
    pub(crate) limits: Limits,
    /// Entries of the decision cache a [`super::Router`] keeps for this
    /// policy; 0 when off (by option, or because the policy reads a
    /// per-request attribute or the whole header map).
    pub(crate) cache_size: usize,
}

pub(crate) struct Cluster {
    pub(crate) name: String,
    /// The cluster's attributes plus `name`, as written in the inventory.
    pub(crate) attributes: Value,
    /// The cluster's attributes plus `name`, as `cluster` in CEL, converted
    /// once here so that binding it per evaluation copies nothing.
    pub(crate) value: Box<dyn cel::common::value::Val>,
}

pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) when: Option<Expression>,
    pub(crate) action: Action,
}

pub(crate) enum Action {
    Require(Expression),
    Deny {
        status: u16,
        message: String,
    },
    Prefer(Vec<usize>),
    OrderBy {
        key: Expression,
        descending: bool,
    },
    /// Weighted split: each candidate's weight, and the key that keeps a
    /// key's requests on one cluster (rendezvous hashing).
    Split {
        weight: Expression,
        sticky_by: Box<Expression>,
    },
}

impl Action {
    /// The expression evaluated once per candidate cluster, if any.
    pub(crate) fn per_cluster(&self) -> Option<&Expression> {
        match self {
            Action::Require(e) | Action::OrderBy { key: e, .. } => Some(e),
            Action::Split { weight, .. } => Some(weight),
            Action::Deny { .. } | Action::Prefer(_) => None,
        }
    }

    pub(crate) fn per_cluster_mut(&mut self) -> Option<&mut Expression> {
        match self {
            Action::Require(e) | Action::OrderBy { key: e, .. } => Some(e),
            Action::Split { weight, .. } => Some(weight),
            Action::Deny { .. } | Action::Prefer(_) => None,
        }
    }

    /// Every expression of the action.
    pub(crate) fn expressions(&self) -> Vec<&Expression> {
        match self {
            Action::Split { weight, sticky_by } => vec![weight, sticky_by.as_ref()],
            other => other.per_cluster().into_iter().collect(),
        }
    }
}

/// `usage:` after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageOptions {
    /// Request header whose value keys a second set of usage counters.
    pub key_header: Option<String>,
}

/// A compiled CEL expression.
pub(crate) struct Expression {
    /// The program as it runs: instrumented to charge the evaluation budget.
    pub(crate) executable: cel::common::ast::IdedExpr,
    /// Worst-case cost of one evaluation, estimated at load.
    pub(crate) cost: u64,
    /// What its value depends on, and so when it may be evaluated.
    pub(crate) reads: Reads,
    /// Reads live cluster state (whatever else it reads).
    pub(crate) reads_live: bool,
    /// The live fields it names; `None` when it may read any.
    pub(crate) live_names: Option<std::collections::BTreeSet<String>>,
    /// For a per-cluster expression (`require`, `order_by`) that reads only
    /// the inventory: its result for each cluster, evaluated once at load.
    pub(crate) per_cluster: Option<Vec<Result<Value, cel::ExecutionError>>>,
    /// For a `when`: the same condition evaluated without the interpreter.
    pub(crate) fast: Option<super::fast::Fast>,
}

impl Policy {
    /// The policy's name, when the document gives one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// Some expression reads live cluster state (`cluster.live.*`): the
    /// adapter observes traffic and keeps a live snapshot only then.
    pub fn reads_live(&self) -> bool {
        self.reads_live
    }
    /// The live fields the policy may name (built-in and declared).
    pub fn live_field_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.live_fields.names()
    }
    /// Whether the policy may read the live field `name`.
    pub fn reads_live_field(&self, name: &str) -> bool {
        self.reads_live
            && self
                .live_read
                .as_ref()
                .is_none_or(|read| read.contains(name))
    }
    /// The live fields a decision may read, in name order: those the
    /// inventory can name and the policy's expressions read.
    pub fn live_fields_read(&self) -> Vec<String> {
        (self.live_fields.names())
            .filter(|field| self.reads_live_field(field))
            .map(str::to_string)
            .collect()
    }
    /// How live state is kept for this policy.
    pub fn live_options(&self) -> &LiveOptions {
        &self.live_options
    }
    /// Content version: a hash of the document text.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The content version as a number (for a stats gauge).
    pub fn version_number(&self) -> u64 {
        u64::from_str_radix(&self.version, 16).unwrap_or(0)
    }
    /// Request header that carries the chosen cluster.
    pub fn routing_header(&self) -> &str {
        &self.routing_header
    }
    /// Response header that reports the decision, if enabled.
    pub fn fallback_header(&self) -> Option<&str> {
        self.fallback_header.as_deref()
    }
    /// The policy's content version and name, as decision records carry them.
    pub(crate) fn identity(&self) -> (&str, Option<&str>) {
        (&self.version, self.name.as_deref())
    }
    /// Whether decisions are recorded for the access log (`options.decision_log`).
    pub fn keeps_decision_log(&self) -> bool {
        self.decision_log.is_some()
    }
    pub fn decision_header(&self) -> Option<&str> {
        self.decision_header.as_deref()
    }
    pub fn log_level(&self) -> LogLevel {
        self.log_level
    }
    /// Cluster names in inventory order.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(|c| c.name.as_str())
    }
    /// Rule names in document order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }
    /// How many CEL programs this policy compiled (all of them at load).
    pub fn programs_compiled(&self) -> usize {
        self.programs
    }
    /// Entries of the decision cache; 0 when it is off (by option, or
    /// because the policy reads a per-request attribute or the whole header map).
    /// The spend budgets the policy declares.
    pub fn budgets(&self) -> &[super::spending::SpendBudget] {
        &self.budgets
    }
    /// Whether usage is counted: a `usage:` section, or any budget.
    /// Whether routed requests' usage is read from their responses: for
    /// `usage:` counters, budgets, or the decision log's usage records.
    pub fn counts_usage(&self) -> bool {
        self.usage.is_some() || !self.budgets.is_empty() || self.decision_log.is_some()
    }
    /// How usage is counted, when the policy asks for it (`usage:`).
    pub fn usage(&self) -> Option<&UsageOptions> {
        self.usage.as_ref()
    }
    /// A numeric inventory attribute of a cluster, such as
    /// `price_per_1k_tokens` or `egress_per_gb`.
    pub fn cluster_number(&self, cluster: &str, attribute: &str) -> Option<f64> {
        let cluster = self.clusters.iter().find(|c| c.name == cluster)?;
        let Value::Map(map) = &cluster.attributes else {
            return None;
        };
        let key = cel::objects::Key::String(Arc::new(attribute.to_string()));
        super::inventory::number(map.map.get(&key)?)
    }
    /// Reads `request.body`: each request is held until its body is complete.
    pub fn reads_body(&self) -> bool {
        self.needs.reads_body()
    }
    /// The largest body a policy that reads the body waits for.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }
    pub fn decision_cache_size(&self) -> usize {
        self.cache_size
    }
    /// The attributes this policy reads; the only ones fetched per request.
    pub fn referenced_attributes(&self) -> Vec<String> {
        self.needs.describe()
    }

    /// What tools need to know of a loaded policy: names, rules and their kinds.
    pub fn description(&self) -> PolicyDescription {
        PolicyDescription {
            name: self.name.clone(),
            version: self.version.clone(),
            routing_header: self.routing_header.clone(),
            clusters: self.cluster_names().map(str::to_string).collect(),
            rules: self
                .rules
                .iter()
                .map(|r| RuleDescription {
                    name: r.name.clone(),
                    kind: match r.action {
                        Action::Require(_) => "require",
                        Action::Deny { .. } => "deny",
                        Action::Prefer(_) => "prefer",
                        Action::OrderBy { .. } => "order_by",
                        Action::Split { .. } => "split",
                    }
                    .to_string(),
                })
                .collect(),
            reads: self.referenced_attributes(),
            reads_budgets: self.needs.budgets.keys().cloned().collect(),
            reads_live: self.reads_live,
            live_fields_read: self.live_fields_read(),
            decision_log: self.decision_log.is_some(),
        }
    }
}

/// A loaded policy as tools see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PolicyDescription {
    pub name: Option<String>,
    pub version: String,
    pub routing_header: String,
    pub clusters: Vec<String>,
    pub rules: Vec<RuleDescription>,
    pub reads: Vec<String>,
    /// The budgets it reads (`budget.<name>`).
    #[serde(default)]
    pub reads_budgets: Vec<String>,
    /// Whether it reads live cluster state (`cluster.live.*`).
    #[serde(default)]
    pub reads_live: bool,
    /// The live fields it reads (`cluster.live.<field>`).
    #[serde(default)]
    pub live_fields_read: Vec<String>,
    /// Whether it keeps a decision log (`options.decision_log`).
    #[serde(default)]
    pub decision_log: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuleDescription {
    pub name: String,
    /// `require`, `deny`, `prefer` or `order_by`.
    pub kind: String,
}

/// A short, stable identifier of a policy's text: FNV-1a 64 folded to 48
/// bits, as 12 hex digits. It fits a stats gauge exactly, so the
/// `celroute.policy_version` gauge and the decision header agree.
pub fn content_version(text: &str) -> String {
    let hash = fnv1a64(text.as_bytes());
    format!("{:012x}", (hash ^ (hash >> 48)) & 0xffff_ffff_ffff)
}

/// FNV-1a, 64 bits: a fast, stable hash of bytes (not for adversaries).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
