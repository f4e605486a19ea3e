//! The VM's stats: defined once, shared by every policy it loads; per-request
//! counts batched and handed to the host every 100 ms.

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

use crate::engine::{Decision, Outcome, Served};

/// Metrics of this VM; defined once, shared by every policy it loads.
pub(super) struct Metrics {
    pub(super) denials: Option<u32>,
    pub(super) evaluation_errors: Option<u32>,
    pub(super) configurations_accepted: Option<u32>,
    pub(super) configurations_rejected: Option<u32>,
    pub(super) policy_version: Option<u32>,
    pub(super) programs_compiled: Option<u32>,
    pub(super) attribute_fetches: Option<u32>,
    pub(super) decision_cache_hits: Option<u32>,
    pub(super) decision_cache_misses: Option<u32>,
    /// Decision counters by cluster and by rule name (defined on first use).
    pub(super) clusters: HashMap<String, Option<u32>>,
    pub(super) rules: HashMap<String, Option<u32>>,
    /// Per-request counts not yet given to the host, by metric id: a host
    /// call per counter per request would cost more than the decision.
    pub(super) pending: HashMap<u32, u64>,
}

/// How often per-request counters reach the host's stats.
pub(super) const METRICS_FLUSH_PERIOD: Duration = Duration::from_millis(100);

impl Metrics {
    pub(super) fn new() -> Metrics {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Metrics {
            denials: counter("celroute.denials"),
            evaluation_errors: counter("celroute.evaluation_errors"),
            configurations_accepted: counter("celroute.configurations_accepted"),
            configurations_rejected: counter("celroute.configurations_rejected"),
            policy_version: hostcalls::define_metric(MetricType::Gauge, "celroute.policy_version")
                .ok(),
            programs_compiled: counter("celroute.programs_compiled"),
            attribute_fetches: counter("celroute.attribute_fetches"),
            decision_cache_hits: counter("celroute.decision_cache.hits"),
            decision_cache_misses: counter("celroute.decision_cache.misses"),
            clusters: HashMap::new(),
            rules: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    pub(super) fn add(id: Option<u32>, n: u64) {
        if let (Some(id), Ok(n)) = (id, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    /// Counts `n` towards a per-request counter, given to the host at the next flush.
    pub(super) fn count(&mut self, id: Option<u32>, n: u64) {
        if let Some(id) = id {
            *self.pending.entry(id).or_insert(0) += n;
        }
    }

    pub(super) fn flush(&mut self) {
        for (id, n) in self.pending.drain() {
            Metrics::add(Some(id), n);
        }
    }

    pub(super) fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// Counts one decision for `name` in `metrics` (`celroute.decisions.<kind>.<name>`),
    /// looking the counter up without allocating once it is defined.
    pub(super) fn count_decision(&mut self, kind: &str, name: &str) {
        let metrics = if kind == "cluster" {
            &mut self.clusters
        } else {
            &mut self.rules
        };
        let id = match metrics.get(name) {
            Some(id) => *id,
            None => {
                let id = hostcalls::define_metric(
                    MetricType::Counter,
                    &format!("celroute.decisions.{kind}.{name}"),
                )
                .ok();
                metrics.insert(name.to_string(), id);
                id
            }
        };
        self.count(id, 1);
    }

    /// Counts one request's decision: how it was served, what it cost in
    /// attribute fetches and errors, and where it went.
    pub(super) fn count_request(&mut self, decision: &Decision, served: Served, fetches: u64) {
        self.count(self.attribute_fetches, fetches);
        if !decision.errors.is_empty() {
            self.count(self.evaluation_errors, decision.errors.len() as u64);
        }
        let id = match served {
            Served::FromCache => self.decision_cache_hits,
            Served::Missed => self.decision_cache_misses,
            Served::Evaluated => None,
        };
        self.count(id, 1);
        match &decision.outcome {
            Outcome::Route { cluster } => self.count_decision("cluster", cluster),
            Outcome::Deny { .. } => self.count(self.denials, 1),
        }
        self.count_decision("rule", &decision.rule);
    }
}
