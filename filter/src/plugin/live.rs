//! Live state in Envoy: each worker counts what it observes, and on every
//! tick merges it into one shared-data record per cluster (compare-and-swap,
//! so that workers never lose each other's counts), reads every record back
//! and gives the router a new snapshot. Requests read only the router's
//! snapshot: live state costs no host call per decision.
//!
//! The callouts (the signals feed, each scraped cluster's metrics, each
//! probe of a half-open breaker) are made by one worker per period: the one
//! that wins the compare-and-swap on that callout's lease record.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::log;
use crate::engine::{LogLevel, Router};
use crate::signals::snapshot::Breaker;
use crate::signals::{
    parse_feed, parse_metrics, snapshot, ClusterState, Pending, Signal, STATE_KEY_PREFIX,
};

/// Shared-data key prefix of the callouts' leases: when each is next due.
const LEASE_PREFIX: &str = "celroute.live.v1/.lease/";
const PROBE_TIMEOUT_MS: u64 = 1_000;

/// What a callout in flight was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Feed,
    Scrape(String),
    Probe(String),
}

impl Call {
    fn lease(&self) -> String {
        match self {
            Call::Feed => format!("{LEASE_PREFIX}feed"),
            Call::Scrape(cluster) => format!("{LEASE_PREFIX}scrape/{cluster}"),
            Call::Probe(cluster) => format!("{LEASE_PREFIX}probe/{cluster}"),
        }
    }
}

/// One worker's live bookkeeping; it lives in the root context, so it
/// outlives a policy reload.
#[derive(Default)]
pub(super) struct Live {
    pub(super) pending: Pending,
    /// The time of the last tick (ms since the epoch).
    pub(super) now: u64,
    /// Callouts in flight: token -> what for, and when it is given up (a
    /// second after its timeout).
    calls: HashMap<u32, (Call, u64)>,
}

/// Milliseconds since the epoch, by the host's clock.
pub(super) fn now_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Live {
    /// One tick: merges this worker's observations into the shared records,
    /// gives the router the snapshot at `now`, and makes the callouts due.
    pub(super) fn tick(&mut self, router: &Router, now: u64) {
        self.now = now;
        self.flush(router);
        let states = Live::refresh(router, now);
        let options = router.policy().live_options();
        // The host answers every call, if only with a timeout; a call that
        // outlived its timeout by a second is given up.
        self.calls.retain(|_, (_, give_up)| now <= *give_up);
        if let Some(feed) = &options.feed {
            let headers = [("accept", "application/json")];
            self.call(
                Call::Feed,
                &feed.cluster,
                &feed.path,
                &headers,
                feed.every_ms,
                feed.timeout_ms,
                router,
                now,
            );
        }
        if let Some(scrape) = &options.scrape {
            for cluster in &scrape.clusters {
                let call = Call::Scrape(cluster.clone());
                self.call(
                    call,
                    cluster,
                    &scrape.path,
                    &[("accept", "text/plain")],
                    scrape.every_ms,
                    scrape.timeout_ms,
                    router,
                    now,
                );
            }
        }
        for (cluster, state) in &states {
            if Breaker::of(state, options, now) == Breaker::HalfOpen {
                let call = Call::Probe(cluster.clone());
                let every = options.breaker_cool_down_ms;
                self.call(
                    call,
                    cluster,
                    &options.probe_path,
                    &[],
                    every,
                    PROBE_TIMEOUT_MS,
                    router,
                    now,
                );
            }
        }
    }

    /// Merges this worker's observations into the shared records.
    fn flush(&mut self, router: &Router) {
        let stale_after = router.policy().live_options().stale_after_ms;
        for (cluster, pending) in self.pending.take() {
            let merged = update(&cluster, |state| state.merge(&pending, stale_after));
            if !merged {
                log(
                    router.policy().log_level(),
                    LogLevel::Warn,
                    &format!("live state of '{cluster}': too much contention, one batch of observations dropped"),
                );
            }
        }
    }

    /// Gives the router the snapshot of every cluster of its policy at `now`;
    /// returns the states it was made from.
    pub(super) fn refresh(router: &Router, now: u64) -> Vec<(String, ClusterState)> {
        let policy = router.policy();
        let states: Vec<(String, ClusterState)> = policy
            .cluster_names()
            .map(|name| {
                let bytes = hostcalls::get_shared_data(&key(name))
                    .ok()
                    .and_then(|(b, _)| b);
                (name.to_string(), ClusterState::from_bytes(bytes.as_deref()))
            })
            .collect();
        let snapshot = snapshot(
            states.iter().map(|(name, state)| (name.as_str(), state)),
            policy.live_options(),
            now,
        );
        router.set_live(&snapshot);
        states
    }

    /// Sends `GET path` to `cluster` for `call` when this worker wins the
    /// call's lease for the period `every_ms`, unless one is in flight here.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        call: Call,
        cluster: &str,
        path: &str,
        extra: &[(&str, &str)],
        every_ms: u64,
        timeout_ms: u64,
        router: &Router,
        now: u64,
    ) {
        if self.calls.values().any(|(c, _)| *c == call) || !take_lease(&call.lease(), now, every_ms)
        {
            return;
        }
        let mut headers = vec![(":method", "GET"), (":path", path), (":authority", cluster)];
        headers.extend_from_slice(extra);
        match hostcalls::dispatch_http_call(
            cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(timeout_ms),
        ) {
            Ok(token) => {
                let give_up = now.saturating_add(timeout_ms).saturating_add(1_000);
                self.calls.insert(token, (call, give_up));
            }
            Err(status) => log(
                router.policy().log_level(),
                LogLevel::Warn,
                &format!("live state: cannot call cluster '{cluster}' ({call:?}): {status:?}"),
            ),
        }
    }

    /// A callout's answer.
    pub(super) fn answered(&mut self, token: u32, body_size: usize, router: &Router, now: u64) {
        let Some((call, _)) = self.calls.remove(&token) else {
            return;
        };
        let status: u16 = call_status().parse().unwrap_or(0);
        let body = || {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let level = router.policy().log_level();
        match call {
            Call::Probe(cluster) => {
                let ok = (100..500).contains(&status) && status != 429;
                self.pending.probed(&cluster, ok, now);
                log(
                    level,
                    LogLevel::Info,
                    &format!(
                        "probe of '{cluster}' after its cool-down: {}; breaker {}",
                        describe(status),
                        if ok { "closes" } else { "opens again" }
                    ),
                );
            }
            Call::Feed if status != 200 => log(
                level,
                LogLevel::Warn,
                &format!(
                    "signals feed: {}; keeping the last good values",
                    describe(status)
                ),
            ),
            Call::Feed => match parse_feed(&body()) {
                Ok(values) => {
                    let count = record(
                        router,
                        values.iter().map(|(c, f, v)| (c.as_str(), f.as_str(), v)),
                        now,
                    );
                    log(
                        level,
                        LogLevel::Debug,
                        &format!("signals feed: {count} values recorded"),
                    );
                }
                Err(e) => log(
                    level,
                    LogLevel::Warn,
                    &format!("signals feed rejected, keeping the last good values: {e}"),
                ),
            },
            Call::Scrape(cluster) if status != 200 => log(
                level,
                LogLevel::Warn,
                &format!(
                    "metrics of '{cluster}': {}; keeping the last good values",
                    describe(status)
                ),
            ),
            Call::Scrape(cluster) => {
                let Some(scrape) = &router.policy().live_options().scrape else {
                    return;
                };
                let text = String::from_utf8_lossy(&body()).into_owned();
                let values = parse_metrics(&text, &scrape.metrics);
                record(
                    router,
                    values
                        .iter()
                        .map(|(f, v)| (cluster.as_str(), f.as_str(), v)),
                    now,
                );
            }
        }
    }
}

/// "status 503", or what no status means.
fn describe(status: u16) -> String {
    if status == 0 {
        "no answer (timeout or connection failure)".to_string()
    } else {
        format!("status {status}")
    }
}

/// Records reported values of the policy's clusters in the shared records;
/// returns how many.
fn record<'a>(
    router: &Router,
    values: impl Iterator<Item = (&'a str, &'a str, &'a Signal)>,
    now: u64,
) -> usize {
    let mut by_cluster: HashMap<&str, Vec<(&str, &Signal)>> = HashMap::new();
    for (cluster, field, value) in values {
        by_cluster.entry(cluster).or_default().push((field, value));
    }
    let mut count = 0;
    for cluster in router.policy().cluster_names() {
        let Some(mine) = by_cluster.get(cluster) else {
            continue;
        };
        count += mine.len();
        update(cluster, |state| {
            for (field, value) in mine {
                state.report(field, (*value).clone(), now);
            }
        });
    }
    count
}

/// The `:status` of the callout being answered ("" when none came).
fn call_status() -> String {
    hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn key(cluster: &str) -> String {
    format!("{STATE_KEY_PREFIX}{cluster}")
}

/// Applies `change` to a cluster's shared record with compare-and-swap;
/// false when other workers kept winning.
fn update(cluster: &str, mut change: impl FnMut(&mut ClusterState)) -> bool {
    super::shared::update(&key(cluster), |bytes| {
        let mut state = ClusterState::from_bytes(bytes);
        change(&mut state);
        state.to_bytes()
    })
}

/// True when the lease `key` (a time something is next due) has come and
/// this worker claimed the next period.
fn take_lease(key: &str, now: u64, every_ms: u64) -> bool {
    let Ok((bytes, cas)) = hostcalls::get_shared_data(key) else {
        return false;
    };
    let due: u64 = bytes
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if now < due {
        return false;
    }
    let next = now.saturating_add(every_ms).to_string();
    hostcalls::set_shared_data(key, Some(next.as_bytes()), cas).is_ok()
}
