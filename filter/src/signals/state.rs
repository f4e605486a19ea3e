//! A cluster's live state as kept in Envoy's shared data: one JSON record per
//! cluster under `celroute.live.v1/<cluster>`, merged by every worker with
//! compare-and-swap. The format is versioned; a record of another version,
//! or one that does not parse, is replaced rather than trusted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::observe::PendingCluster;
use super::Signal;

pub const STATE_VERSION: u32 = 1;
/// Shared-data key of a cluster's state: this prefix and the cluster name.
pub const STATE_KEY_PREFIX: &str = "celroute.live.v1/";

/// Weight of one new sample in the moving averages: about the last ten
/// samples count (LiteLLM averages the last 10 latencies).
const ALPHA: f64 = 0.2;

/// A value and when it was measured (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    pub value: f64,
    pub at: u64,
}

/// A reported value and when it was reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reported {
    pub value: Signal,
    pub at: u64,
}

/// One cluster's aggregated live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub version: u32,
    /// Moving average of the time to response headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Timed>,
    /// Moving average of failures (1) and successes (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<Timed>,
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default)]
    pub last_failure_at: u64,
    /// Requests routed there and not finished, over every worker.
    #[serde(default)]
    pub in_flight: i64,
    /// Values reported by upstreams (ORCA) and the signals feed.
    #[serde(default)]
    pub reported: BTreeMap<String, Reported>,
}

impl Default for ClusterState {
    fn default() -> ClusterState {
        ClusterState {
            version: STATE_VERSION,
            latency_ms: None,
            error_rate: None,
            consecutive_failures: 0,
            last_failure_at: 0,
            in_flight: 0,
            reported: BTreeMap::new(),
        }
    }
}

impl ClusterState {
    /// The state a shared-data record holds; a missing, unreadable or
    /// foreign-version record is a fresh state.
    pub fn from_bytes(bytes: Option<&[u8]>) -> ClusterState {
        bytes
            .and_then(|b| serde_json::from_slice::<ClusterState>(b).ok())
            .filter(|s| s.version == STATE_VERSION)
            .unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds one worker's observations. An average last updated more than
    /// `stale_after_ms` before them starts again from them.
    pub fn merge(&mut self, pending: &PendingCluster, stale_after_ms: u64) {
        let fresh = |t: Option<Timed>| {
            t.filter(|t| pending.last_outcome_at.saturating_sub(t.at) <= stale_after_ms)
        };
        if pending.latency_samples > 0 {
            let mean = pending.latency_sum_ms / f64::from(pending.latency_samples);
            self.latency_ms = Some(average(
                fresh(self.latency_ms),
                mean,
                pending.latency_samples,
                pending.last_outcome_at,
            ));
        }
        if pending.outcomes > 0 {
            let rate = f64::from(pending.failures) / f64::from(pending.outcomes);
            self.error_rate = Some(average(
                fresh(self.error_rate),
                rate,
                pending.outcomes,
                pending.last_outcome_at,
            ));
        }
        if pending.had_success {
            self.consecutive_failures = pending.trailing_failures;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(pending.failures);
        }
        self.last_failure_at = self.last_failure_at.max(pending.last_failure_at);
        self.in_flight = self.in_flight.saturating_add(pending.in_flight).max(0);
        for (field, (value, at)) in &pending.reported {
            self.report(field, value.clone(), *at);
        }
    }

    /// Sets one live field as a test states it, as of `now`: `healthy` or
    /// `breaker` false/"open" opens the breaker at `now` (true/"closed"
    /// closes it), the observed averages and counts take the value as
    /// measured at `now`, and any other field is a reported value.
    pub fn set_field(&mut self, field: &str, value: Signal, now: u64) -> Result<(), String> {
        let number = |v: &Signal| match v {
            Signal::Number(n) if n.is_finite() => Ok(*n),
            other => Err(format!("{field}: {other:?} is not a number")),
        };
        match (field, &value) {
            ("healthy", Signal::Bool(healthy)) => self.set_breaker(!healthy, now),
            ("breaker", Signal::Text(state)) if state == "open" || state == "closed" => {
                self.set_breaker(state == "open", now)
            }
            ("healthy" | "breaker", other) => {
                return Err(format!(
                    "{field}: {other:?} is not {}",
                    if field == "healthy" {
                        "true or false"
                    } else {
                        "\"open\" or \"closed\""
                    }
                ))
            }
            ("latency_ms", v) => {
                self.latency_ms = Some(Timed {
                    value: number(v)?,
                    at: now,
                })
            }
            ("error_rate", v) => {
                self.error_rate = Some(Timed {
                    value: number(v)?,
                    at: now,
                })
            }
            ("in_flight", v) => self.in_flight = number(v)? as i64,
            ("consecutive_failures", v) => {
                self.consecutive_failures = number(v)? as u32;
                self.last_failure_at = now;
            }
            _ => self.report(field, value, now),
        }
        Ok(())
    }

    fn set_breaker(&mut self, open: bool, now: u64) {
        self.consecutive_failures = if open { u32::MAX / 2 } else { 0 };
        self.last_failure_at = if open { now } else { 0 };
    }

    /// Records a reported value unless a newer one is already there.
    pub fn report(&mut self, field: &str, value: Signal, at: u64) {
        let newer = self.reported.get(field).is_none_or(|r| r.at <= at);
        if newer {
            self.reported
                .insert(field.to_string(), Reported { value, at });
        }
    }
}

/// The moving average after `n` samples whose mean is `mean`.
fn average(previous: Option<Timed>, mean: f64, n: u32, at: u64) -> Timed {
    let value = match previous {
        None => mean,
        Some(previous) => {
            let weight = 1.0 - (1.0 - ALPHA).powi(n.min(1000) as i32);
            previous.value + weight * (mean - previous.value)
        }
    };
    Timed {
        value,
        at: at.max(previous.map_or(0, |p| p.at)),
    }
}
