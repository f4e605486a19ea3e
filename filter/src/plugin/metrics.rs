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
    pub(super) bodies_refused: Option<u32>,
    /// Counters named at run time, `<family>.<scope>.<name>` such as
    /// `celroute.decisions.cluster.<name>`: defined on first use, then looked
    /// up by family, scope and name without allocating.
    pub(super) named: HashMap<(&'static str, &'static str), HashMap<String, Option<u32>>>,
    /// Per-request counts not yet given to the host, by metric id: a host
    /// call per counter per request would cost more than the decision.
    pub(super) pending: HashMap<u32, u64>,
}

/// Distinct usage keys counted per VM and counter; more are counted as `other`.
pub(super) const MAX_USAGE_KEYS: usize = 1000;

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
            bodies_refused: counter("celroute.request_body.refused"),
            named: HashMap::new(),
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

    /// Counts `n` towards the counter `<family>.<scope>.<name>`, defining
    /// it on first use.
    pub(super) fn count_named(&mut self, family: (&'static str, &'static str), name: &str, n: u64) {
        let names = self.named.entry(family).or_default();
        let id = match names.get(name) {
            Some(id) => *id,
            None => {
                let (family, scope) = family;
                let full = format!("{family}.{scope}.{name}");
                let id = hostcalls::define_metric(MetricType::Counter, &full).ok();
                names.insert(name.to_string(), id);
                id
            }
        };
        self.count(id, n);
    }

    /// Counts usage: `celroute.usage.<what>.<scope>.<name>`, such as
    /// `celroute.usage.prompt_tokens.cluster.aws-us-east-1`. Keys beyond the
    /// first [`MAX_USAGE_KEYS`] are counted as `other`.
    pub(super) fn count_usage(
        &mut self,
        what: &'static str,
        scope: &'static str,
        name: &str,
        n: u64,
    ) {
        let family = (what, scope);
        let names = self.named.get(&family);
        let crowded = names.is_some_and(|names| {
            scope == "key" && names.len() >= MAX_USAGE_KEYS && !names.contains_key(name)
        });
        self.count_named(family, if crowded { "other" } else { name }, n);
    }

    pub(super) fn count_body_refused(&mut self) {
        self.count(self.bodies_refused, 1);
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
            Outcome::Route { cluster } => {
                self.count_named(("celroute.decisions", "cluster"), cluster, 1)
            }
            Outcome::Deny { .. } => self.count(self.denials, 1),
        }
        self.count_named(("celroute.decisions", "rule"), &decision.rule, 1);
    }
}

/// A header value as a stat name segment: at most 64 of its letters,
/// digits, `-` and `_`, each other byte as `_`.
pub(super) fn stat_name(value: &[u8]) -> String {
    let name: String = value
        .iter()
        .take(64)
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "empty".into()
    } else {
        name
    }
}
