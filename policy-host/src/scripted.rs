//! Test cases with live state and scripts: the live values a case starts
//! from, and steps that change the simulated world (upstream answers,
//! callout replies, virtual time) and send requests, each checked.
//!
//! ```yaml
//! - name: the breaker opens after three failures
//!   steps:
//!     - upstreams: {azure-westeurope: {status: 503}}
//!     - request: {headers: {x-user-region: eu}}
//!       expect: {cluster: azure-westeurope}
//!       repeat: 3
//!     - advance: 100ms
//!   request: {headers: {x-user-region: eu}}
//!   expect: {cluster: gcp-europe-west4, rule: preference}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use celroute::engine::parse_duration;
use celroute::signals::{ClusterState, Signal, STATE_KEY_PREFIX};
use serde::Deserialize;

use crate::environment::Environment;
use crate::policy::LoadedPolicy;
use crate::request::RequestSpec;
use crate::upstream::Response;

/// Virtual time at which a scripted case starts: 2026-01-01T00:00:00Z.
pub const START_NANOS: u64 = 1_767_225_600_000_000_000;
/// Envoy ticks the filter every 100 ms; virtual time ticks it as often.
const TICK: Duration = Duration::from_millis(100);

/// Live values: cluster -> field -> value (number, bool or string).
pub type LiveSpec = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

/// One step of a case's script; exactly one of its kinds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Sets live values, as of now.
    #[serde(default)]
    pub live: Option<LiveSpec>,
    /// From now on, how each named cluster answers requests and probes.
    #[serde(default)]
    pub upstreams: Option<BTreeMap<String, UpstreamSpec>>,
    /// Queues the reply to the next HTTP callout to an upstream (the feed).
    #[serde(default)]
    pub callout: Option<CalloutReply>,
    /// Moves virtual time on (`250ms`, `5s`), ticking the filter every 100 ms.
    #[serde(default)]
    pub advance: Option<String>,
    /// Sends a request (`repeat` times), checking each decision against `expect`.
    #[serde(default)]
    pub request: Option<RequestSpec>,
    #[serde(default)]
    pub expect: Option<crate::expect::Expectation>,
    #[serde(default)]
    pub repeat: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub latency_ms: u64,
    /// `endpoint-load-metrics` header value (ORCA), e.g. `TEXT named_metrics.num_requests_waiting=40`.
    #[serde(default)]
    pub load_report: Option<String>,
    /// The JSON body (a string is sent as it is); `{}` when absent. A body
    /// with `usage` is what a budget is charged by.
    #[serde(default)]
    pub body: serde_json::Value,
}

/// A scripted body as sent: a string as it is, other JSON as JSON, `{}` for none.
fn body_text(body: &serde_json::Value) -> String {
    match body {
        serde_json::Value::Null => "{}".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalloutReply {
    pub upstream: String,
    #[serde(default = "ok")]
    pub status: u16,
    /// A JSON value, sent as JSON; a string is sent as it is.
    #[serde(default)]
    pub body: serde_json::Value,
}

fn ok() -> u16 {
    200
}

/// The environment a scripted case starts in: virtual time, nothing shared.
pub fn environment() -> Environment {
    Environment::with_virtual_clock(START_NANOS)
}

/// Writes live values into the shared records the filter reads, as of the
/// environment's time, then ticks the filter so that it takes them.
pub fn set_live(policy: &mut LoadedPolicy<'_>, live: &LiveSpec) -> Result<()> {
    let environment = policy.environment().clone();
    let now = environment.clock.now_nanos() / 1_000_000;
    for (cluster, fields) in live {
        let key = format!("{STATE_KEY_PREFIX}{cluster}");
        let mut state = ClusterState::from_bytes(environment.shared.get(&key).as_deref());
        set_fields(&mut state, cluster, fields, now)?;
        store(&environment, key, &state);
    }
    policy.tick().map_err(|e| anyhow!("{e}"))
}

/// Replaces the live state of every cluster in `clusters` with exactly the
/// values given (a cluster or field not given is absent), as of the
/// environment's time, then ticks the filter so that it takes them: the
/// live state a logged decision saw, restored for its replay.
pub fn replace_live(
    policy: &mut LoadedPolicy<'_>,
    clusters: &[String],
    live: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    // The filter first hands over what it observed since its last tick, so
    // that nothing merges into the state written here.
    policy.tick().map_err(|e| anyhow!("{e}"))?;
    let environment = policy.environment().clone();
    let now = environment.clock.now_nanos() / 1_000_000;
    for cluster in clusters {
        let mut state = ClusterState::default();
        // `healthy` and `breaker` say the same: a closed breaker unless told.
        state
            .set_field("healthy", Signal::Bool(true), now)
            .map_err(|e| anyhow!(e))?;
        let fields = live.get(cluster).and_then(|v| v.as_object());
        set_fields(&mut state, cluster, fields.into_iter().flatten(), now)?;
        store(&environment, format!("{STATE_KEY_PREFIX}{cluster}"), &state);
    }
    policy.tick().map_err(|e| anyhow!("{e}"))
}

/// Sets each of `fields` on a cluster's state, as of `now`.
fn set_fields<'a>(
    state: &mut ClusterState,
    cluster: &str,
    fields: impl IntoIterator<Item = (&'a String, &'a serde_json::Value)>,
    now: u64,
) -> Result<()> {
    for (field, value) in fields {
        let signal = match value {
            serde_json::Value::Bool(b) => Signal::Bool(*b),
            serde_json::Value::Number(n) => Signal::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => Signal::Text(s.clone()),
            other => bail!("live.{cluster}.{field}: {other} is not a number, bool or string"),
        };
        state
            .set_field(field, signal, now)
            .map_err(|e| anyhow!("live.{cluster}.{e}"))?;
    }
    Ok(())
}

/// Stores a cluster's state where the filter reads it, as a new version.
fn store(environment: &Environment, key: String, state: &ClusterState) {
    let mut shared = environment.shared.lock();
    let version = shared.data.get(&key).map_or(0, |(_, v)| *v);
    shared.data.insert(key, (state.to_bytes(), version + 1));
}

/// Applies one non-request step.
pub fn apply(policy: &mut LoadedPolicy<'_>, step: &Step) -> Result<()> {
    let environment = policy.environment().clone();
    if let Some(live) = &step.live {
        set_live(policy, live)?;
    }
    if let Some(upstreams) = &step.upstreams {
        for (cluster, spec) in upstreams {
            let mut response = Response::json(spec.status, &body_text(&spec.body));
            if let Some(report) = &spec.load_report {
                response
                    .headers
                    .push(("endpoint-load-metrics".into(), report.clone().into_bytes()));
            }
            environment.upstreams.answer(cluster, response);
            environment
                .upstreams
                .delay(cluster, Duration::from_millis(spec.latency_ms));
        }
    }
    if let Some(reply) = &step.callout {
        environment.upstreams.reply_to_callout(
            &reply.upstream,
            Response::json(reply.status, &body_text(&reply.body)),
        );
    }
    if let Some(text) = &step.advance {
        let total = parse_duration(text)
            .ok_or_else(|| anyhow!("advance: '{text}' is not a duration such as 250ms or 5s"))?;
        advance(policy, Duration::from_millis(total))?;
    }
    Ok(())
}

/// Moves virtual time on by `by`, ticking the filter every 100 ms.
pub fn advance(policy: &mut LoadedPolicy<'_>, by: Duration) -> Result<()> {
    let clock = policy.environment().clock.clone();
    let mut left = by;
    while left >= TICK {
        clock.advance(TICK).map_err(|e| anyhow!("{e}"))?;
        policy.tick().map_err(|e| anyhow!("{e}"))?;
        left -= TICK;
    }
    clock.advance(left).map_err(|e| anyhow!("{e}"))
}

/// What kind a step is, checking that it is exactly one.
pub fn check(step: &Step) -> Result<()> {
    let kinds = [
        step.live.is_some(),
        step.upstreams.is_some(),
        step.callout.is_some(),
        step.advance.is_some(),
        step.request.is_some(),
    ];
    match kinds.iter().filter(|k| **k).count() {
        1 => {}
        0 => bail!("a step names one of live, upstreams, callout, advance or request"),
        _ => bail!("a step names only one of live, upstreams, callout, advance or request"),
    }
    if step.request.is_none() && (step.expect.is_some() || step.repeat.is_some()) {
        bail!("expect and repeat belong to a request step");
    }
    Ok(())
}
