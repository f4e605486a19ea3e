//! Cluster states to the live snapshot a policy reads: what is stale is left
//! out (absent), and the breaker's state is worked out at `now`.

use cel::Value;

use super::state::ClusterState;
use super::Signal;
use crate::engine::{LiveOptions, LiveSnapshot};

/// The breaker of a cluster at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Closed,
    /// Out of rotation until the cool-down after the last failure ends.
    Open,
    /// The cool-down ended: still out of rotation while the filter probes
    /// it; a probe that succeeds closes it, one that fails opens it again.
    HalfOpen,
}

impl Breaker {
    pub fn of(state: &ClusterState, options: &LiveOptions, now: u64) -> Breaker {
        if state.consecutive_failures < options.breaker_failures {
            Breaker::Closed
        } else if now.saturating_sub(state.last_failure_at) < options.breaker_cool_down_ms {
            Breaker::Open
        } else {
            Breaker::HalfOpen
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Breaker::Closed => "closed",
            Breaker::Open => "open",
            Breaker::HalfOpen => "half_open",
        }
    }
}

/// The snapshot of `states` at `now`. Every cluster has `healthy`,
/// `breaker`, `consecutive_failures` and `in_flight`; an average or a
/// reported value is present only while younger than `stale_after_ms`.
pub fn snapshot<'a>(
    states: impl IntoIterator<Item = (&'a str, &'a ClusterState)>,
    options: &LiveOptions,
    now: u64,
) -> LiveSnapshot {
    let fresh = |at: u64| now.saturating_sub(at) <= options.stale_after_ms;
    let mut snapshot = LiveSnapshot::new();
    for (cluster, state) in states {
        let breaker = Breaker::of(state, options, now);
        snapshot = snapshot
            .set(cluster, "healthy", Value::Bool(breaker == Breaker::Closed))
            .set(
                cluster,
                "breaker",
                Value::String(breaker.name().to_string().into()),
            )
            .set(
                cluster,
                "consecutive_failures",
                Value::Int(i64::from(state.consecutive_failures)),
            )
            .set(cluster, "in_flight", Value::Int(state.in_flight.max(0)));
        for (field, timed) in [
            ("latency_ms", state.latency_ms),
            ("error_rate", state.error_rate),
        ] {
            if let Some(timed) = timed.filter(|t| fresh(t.at)) {
                snapshot = snapshot.set(cluster, field, Value::Float(timed.value));
            }
        }
        for (field, reported) in &state.reported {
            if fresh(reported.at) {
                snapshot = snapshot.set(cluster, field, to_value(&reported.value));
            }
        }
    }
    snapshot
}

fn to_value(signal: &Signal) -> Value {
    match signal {
        Signal::Bool(b) => Value::Bool(*b),
        Signal::Number(n) => Value::Float(*n),
        Signal::Text(s) => Value::String(s.clone().into()),
    }
}
