//! One worker's observations since its last tick, per cluster: what it adds
//! to the shared state when it flushes.

use std::collections::{BTreeMap, HashMap};

use super::Signal;

/// How one routed request ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    /// A 5xx or 429 response, a reset or a connect failure.
    pub failed: bool,
    /// Time from the decision to the upstream's response headers; `None`
    /// when no upstream answered (a connect failure, a reset).
    pub latency_ms: Option<f64>,
    /// When it ended (ms since the epoch).
    pub at: u64,
}

/// What one worker saw of one cluster since its last flush.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PendingCluster {
    pub latency_sum_ms: f64,
    pub latency_samples: u32,
    pub outcomes: u32,
    pub failures: u32,
    /// Failures after the last success in this batch.
    pub trailing_failures: u32,
    pub had_success: bool,
    pub last_failure_at: u64,
    pub last_outcome_at: u64,
    /// Requests started minus requests finished.
    pub in_flight: i64,
    /// Reported values (ORCA), the latest of each with its time.
    pub reported: BTreeMap<String, (Signal, u64)>,
}

impl PendingCluster {
    pub fn is_empty(&self) -> bool {
        *self == PendingCluster::default()
    }
}

/// One worker's observations, by cluster.
#[derive(Debug, Default)]
pub struct Pending {
    clusters: HashMap<String, PendingCluster>,
}

impl Pending {
    fn cluster(&mut self, name: &str) -> &mut PendingCluster {
        self.clusters.entry(name.to_string()).or_default()
    }

    /// A request was routed to `cluster`.
    pub fn started(&mut self, cluster: &str) {
        self.cluster(cluster).in_flight += 1;
    }

    /// A request routed to `cluster` finished.
    pub fn finished(&mut self, cluster: &str, completion: Completion) {
        let c = self.cluster(cluster);
        c.in_flight -= 1;
        c.outcomes += 1;
        c.last_outcome_at = c.last_outcome_at.max(completion.at);
        if completion.failed {
            c.failures += 1;
            c.trailing_failures += 1;
            c.last_failure_at = c.last_failure_at.max(completion.at);
        } else {
            c.had_success = true;
            c.trailing_failures = 0;
        }
        if let Some(ms) = completion.latency_ms {
            if ms.is_finite() && ms >= 0.0 {
                c.latency_sum_ms += ms;
                c.latency_samples += 1;
            }
        }
    }

    /// A probe of `cluster` (after its breaker's cool-down) answered.
    pub fn probed(&mut self, cluster: &str, ok: bool, at: u64) {
        self.started(cluster);
        self.finished(
            cluster,
            Completion {
                failed: !ok,
                latency_ms: None,
                at,
            },
        );
    }

    /// A request routed to `from` failed there and was retried on `to`.
    pub fn retried(&mut self, from: &str, to: &str, at: u64) {
        self.finished(
            from,
            Completion {
                failed: true,
                latency_ms: None,
                at,
            },
        );
        self.started(to);
    }

    /// A request routed to `cluster` ended without an answer to learn from
    /// (the client went away first).
    pub fn abandoned(&mut self, cluster: &str) {
        self.cluster(cluster).in_flight -= 1;
    }

    /// A value `cluster` reported about itself (an ORCA load report).
    pub fn report(&mut self, cluster: &str, field: &str, value: Signal, at: u64) {
        self.cluster(cluster)
            .reported
            .insert(field.to_string(), (value, at));
    }

    /// Takes what was observed, leaving nothing pending.
    pub fn take(&mut self) -> Vec<(String, PendingCluster)> {
        let mut out: Vec<_> = self
            .clusters
            .drain()
            .filter(|(_, c)| !c.is_empty())
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn is_empty(&self) -> bool {
        self.clusters.values().all(PendingCluster::is_empty)
    }
}
