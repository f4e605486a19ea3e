//! Live cluster state: values observed while traffic flows (latency, errors,
//! queue depth, prices), read in CEL as `cluster.live.<field>` next to the
//! cluster's inventory attributes.
//!
//! Two rules keep a live value from being used where it has gone stale:
//! - an expression that reads live state is never evaluated at load, even if
//!   it reads no request attribute (see [`Reads`]);
//! - a cached decision is keyed by the epoch of the snapshot it was decided
//!   under, so a new snapshot is never answered from an older one's entry.
//!
//! A value missing from the snapshot is absent: `has(cluster.live.x)` is
//! false and reading it is an evaluation error, so the fail-closed rules of
//! the decision apply and a missing signal never widens where a request goes.
//!
//! The fields a policy may name form a [`LiveFields`] catalog, fixed when the
//! policy compiles; this build has no live source, so its catalog is empty and
//! `cluster.live` is unknown to policies. Tests compile with a catalog of
//! their own to hold both rules before the first source exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cel::Value;

/// The attribute of `cluster` that holds its live state.
pub const LIVE: &str = "live";

/// Which expressions' values may change, and when: what an expression reads
/// decides when it may be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reads {
    /// Only the inventory: evaluated once per cluster at load.
    Inventory,
    /// Live cluster state (and perhaps the inventory): evaluated against the
    /// snapshot current when a request is decided.
    Live,
    /// A request attribute (and perhaps anything else): evaluated per request.
    Request,
}

/// The live fields policies may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveFields {
    names: BTreeSet<String>,
}

impl LiveFields {
    /// No live field: what this build's sources provide.
    pub fn none() -> LiveFields {
        LiveFields::default()
    }

    /// A catalog of these field names.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> LiveFields {
        LiveFields {
            names: names.into_iter().map(str::to_string).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.names.iter().map(String::as_str)
    }
}

/// Live values observed for clusters, by cluster name and field. Only what is
/// present and fresh belongs in it: whoever builds a snapshot leaves out
/// what is missing or older than its staleness bound.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    pub(crate) clusters: HashMap<String, BTreeMap<String, Value>>,
}

impl LiveSnapshot {
    pub fn new() -> LiveSnapshot {
        LiveSnapshot::default()
    }

    /// Sets one live value of one cluster.
    pub fn set(mut self, cluster: &str, field: &str, value: Value) -> LiveSnapshot {
        self.clusters
            .entry(cluster.to_string())
            .or_default()
            .insert(field.to_string(), value);
        self
    }
}

/// The live fields every policy may read (`cluster.live.<name>`), with their
/// CEL type and where the value comes from. `docs/live-signals.md` is the
/// table users read; a test keeps the two equal.
pub const BUILTIN_FIELDS: &[(&str, &str, &str)] = &[
    ("healthy", "bool", "circuit breaker: false while open"),
    (
        "breaker",
        "string",
        "circuit breaker: closed, open or half_open",
    ),
    (
        "consecutive_failures",
        "int",
        "observed failures since the last success",
    ),
    (
        "in_flight",
        "int",
        "requests this proxy has routed there, not yet finished",
    ),
    (
        "latency_ms",
        "double",
        "observed time to response headers (moving average)",
    ),
    (
        "error_rate",
        "double",
        "observed share of failed requests (moving average)",
    ),
    (
        "queue_depth",
        "double",
        "ORCA num_requests_waiting, scraped or fed",
    ),
    (
        "kv_cache_usage",
        "double",
        "ORCA kv_cache_usage_perc (0 to 1), scraped or fed",
    ),
    ("cpu_utilization", "double", "ORCA cpu_utilization"),
    ("price_per_1k_tokens", "double", "signals feed"),
];

/// Every policy's catalog: the built-in fields and the named values its
/// `live.fields` declares.
pub fn catalog(extra: &[String]) -> LiveFields {
    LiveFields {
        names: BUILTIN_FIELDS
            .iter()
            .map(|(name, _, _)| name.to_string())
            .chain(extra.iter().cloned())
            .collect(),
    }
}

/// How a policy's live state is kept: staleness, breaker, feed. Times in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOptions {
    /// Observed and reported values older than this are absent.
    pub stale_after_ms: u64,
    pub breaker_failures: u32,
    pub breaker_cool_down_ms: u64,
    /// Path probed, with GET, when a cluster's cool-down ends.
    pub probe_path: String,
    pub feed: Option<FeedOptions>,
    pub scrape: Option<ScrapeOptions>,
}

/// Model servers' Prometheus metrics, polled from each listed cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeOptions {
    pub clusters: Vec<String>,
    pub path: String,
    pub every_ms: u64,
    pub timeout_ms: u64,
    /// Live field -> the metric names read for it, in order of preference.
    pub metrics: Vec<(String, Vec<String>)>,
}

/// The metrics read by default: vLLM's names, then SGLang's.
pub const DEFAULT_SCRAPE_METRICS: &[(&str, &[&str])] = &[
    (
        "queue_depth",
        &["vllm:num_requests_waiting", "sglang:num_queue_reqs"],
    ),
    (
        "kv_cache_usage",
        &[
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "sglang:token_usage",
        ],
    ),
];
/// [`DEFAULT_SCRAPE_METRICS`] as a scrape's `metrics`.
pub fn default_scrape_metrics() -> Vec<(String, Vec<String>)> {
    DEFAULT_SCRAPE_METRICS
        .iter()
        .map(|(field, names)| {
            (
                field.to_string(),
                names.iter().map(|n| n.to_string()).collect(),
            )
        })
        .collect()
}
pub const DEFAULT_SCRAPE_PATH: &str = "/metrics";
pub const DEFAULT_SCRAPE_EVERY_MS: u64 = 500;
pub const DEFAULT_SCRAPE_TIMEOUT_MS: u64 = 250;

/// A signals feed polled from an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedOptions {
    pub cluster: String,
    pub path: String,
    pub every_ms: u64,
    pub timeout_ms: u64,
}

pub const DEFAULT_STALE_AFTER_MS: u64 = 10_000;
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
pub const DEFAULT_BREAKER_COOL_DOWN_MS: u64 = 5_000;
pub const DEFAULT_PROBE_PATH: &str = "/";
pub const DEFAULT_FEED_PATH: &str = "/v1/signals";
pub const DEFAULT_FEED_EVERY_MS: u64 = 1_000;
pub const DEFAULT_FEED_TIMEOUT_MS: u64 = 500;

impl Default for LiveOptions {
    fn default() -> LiveOptions {
        LiveOptions {
            stale_after_ms: DEFAULT_STALE_AFTER_MS,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cool_down_ms: DEFAULT_BREAKER_COOL_DOWN_MS,
            probe_path: DEFAULT_PROBE_PATH.to_string(),
            feed: None,
            scrape: None,
        }
    }
}
