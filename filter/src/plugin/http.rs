//! One request: decide, then route (set the header, clear the route cache)
//! or deny (a local reply); report the decision on the response.

use std::rc::Rc;
use std::sync::Arc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::ProxyHost;
use super::live::{now_ms, Live};
use super::metrics::Metrics;
use super::report::report;
use super::{log, Loaded};
use crate::engine::{Decision, LogLevel, Outcome, Served};
use crate::signals::{parse_orca, Completion, ORCA_FORMAT_HEADER, ORCA_HEADER};

pub(super) struct Request {
    pub(super) loaded: Option<Rc<Loaded>>,
    pub(super) metrics: Option<Rc<std::cell::RefCell<Metrics>>>,
    pub(super) decision: Option<Arc<Decision>>,
    /// Live bookkeeping, when the policy reads live state.
    pub(super) live: Option<Rc<std::cell::RefCell<Live>>>,
    /// Where this request went and when, for live observation.
    pub(super) routed: Option<Routed>,
}

pub(super) struct Routed {
    cluster: String,
    decided_at: u64,
    first_byte_at: Option<u64>,
}

impl Context for Request {}

/// A numeric property (Envoy encodes integers as 8 little-endian bytes).
fn property_u64(path: &[&str]) -> Option<u64> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    let bytes: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl HttpContext for Request {
    /// How a routed request ended, in as few host calls as the answer
    /// allows: the status alone for an answer, the flags only when there
    /// was none (or to trust a latency sample).
    fn on_log(&mut self) {
        let (Some(live), Some(routed), Some(loaded)) =
            (&self.live, self.routed.take(), &self.loaded)
        else {
            return;
        };
        let code = property_u64(&["response", "code"]).unwrap_or(0);
        let flags = if code == 0 || routed.first_byte_at.is_some() {
            property_u64(&["response", "flags"]).unwrap_or(0)
        } else {
            0
        };
        let mut live = live.borrow_mut();
        // Outcomes are timed by the worker's last tick (at most 100 ms old).
        let now = live.now;
        if code == 0 && flags == 0 {
            // The client went away before any answer: nothing to learn.
            live.pending.abandoned(&routed.cluster);
            return;
        }
        let upstream_answered = flags == 0;
        // A retry may have moved the request to the fallback: then the
        // cluster it was routed to failed, and the fallback answered.
        let served = (loaded.router.policy().fallback_header().is_some())
            .then(|| {
                hostcalls::get_property(vec!["xds", "cluster_name"])
                    .ok()
                    .flatten()
            })
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|name| !name.is_empty() && *name != routed.cluster);
        let cluster = match served {
            Some(fallback) => {
                live.pending.retried(&routed.cluster, &fallback, now);
                fallback
            }
            None => routed.cluster,
        };
        live.pending.finished(
            &cluster,
            Completion {
                failed: code >= 500 || code == 429 || !upstream_answered,
                latency_ms: routed
                    .first_byte_at
                    .filter(|_| upstream_answered)
                    .map(|at| at.saturating_sub(routed.decided_at) as f64),
                at: now,
            },
        );
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(loaded) = self.loaded.clone() else {
            return self.no_policy();
        };
        let policy = loaded.router.policy();
        let mut host = ProxyHost {
            fetches: 0,
            headers: None,
        };
        let (decision, served) = loaded.router.decide(
            &mut host,
            loaded.reporting || policy.log_level() <= LogLevel::Debug,
        );
        self.observe(&loaded, &decision, served, host.fetches);
        let action = match &decision.outcome {
            Outcome::Route { cluster } => {
                self.started(cluster);
                self.route(&loaded, cluster, decision.fallback.as_deref())
            }
            Outcome::Deny { status, .. } => self.deny(&loaded, &decision, *status),
        };
        self.decision = Some(decision);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.observe_response();
        if let (Some(loaded), Some(decision)) = (&self.loaded, &self.decision) {
            if let (Some(name), Outcome::Route { .. }) =
                (loaded.router.policy().decision_header(), &decision.outcome)
            {
                let value = decision_header_value(decision, loaded);
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
            }
        }
        Action::Continue
    }
}

impl Request {
    /// A request routed under a policy that reads live state: counted in
    /// flight, and asked of a vLLM upstream for its load report.
    fn started(&mut self, cluster: &str) {
        let (Some(live), Some(loaded)) = (&self.live, &self.loaded) else {
            return;
        };
        let observe = loaded.observe;
        live.borrow_mut().pending.started(cluster);
        self.routed = Some(Routed {
            cluster: cluster.to_string(),
            decided_at: if observe.latency {
                now_ms(self.get_current_time())
            } else {
                0
            },
            first_byte_at: None,
        });
        if observe.reports {
            let _ = hostcalls::set_map_value(
                MapType::HttpRequestHeaders,
                ORCA_FORMAT_HEADER,
                Some("text"),
            );
        }
    }

    /// Response headers: the time to first byte, and the upstream's load
    /// report, which never reaches the client.
    fn observe_response(&mut self) {
        let (Some(live), Some(routed), Some(loaded)) = (&self.live, &mut self.routed, &self.loaded)
        else {
            return;
        };
        let observe = loaded.observe;
        if !(observe.latency || observe.reports) {
            return;
        }
        let now = now_ms(hostcalls::get_current_time().unwrap_or(std::time::UNIX_EPOCH));
        routed.first_byte_at = Some(now);
        if !observe.reports {
            return;
        }
        if let Ok(Some(report)) =
            hostcalls::get_map_value(MapType::HttpResponseHeaders, ORCA_HEADER)
        {
            let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, ORCA_HEADER, None);
            let mut live = live.borrow_mut();
            for (field, value) in parse_orca(&report) {
                live.pending.report(&routed.cluster, &field, value, now);
            }
        }
    }

    /// No valid policy was ever loaded: refuse rather than route blindly.
    fn no_policy(&mut self) -> Action {
        let _ = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            crate::engine::DEFAULT_ROUTING_HEADER,
            None,
        );
        self.send_http_response(
            503,
            vec![("content-type", "application/json")],
            Some(br#"{"error":"no_policy","message":"celroute has no valid policy loaded"}"#),
        );
        Action::Pause
    }

    /// Reports, logs and counts a decision.
    fn observe(&self, loaded: &Loaded, decision: &Decision, served: Served, fetches: u64) {
        let level = loaded.router.policy().log_level();
        if loaded.reporting {
            report(
                "decision",
                serde_json::to_value(decision).unwrap_or_default(),
            );
        }
        for error in &decision.errors {
            log(level, LogLevel::Warn, error);
        }
        if level <= LogLevel::Debug {
            let json = serde_json::to_string(decision).unwrap_or_default();
            log(level, LogLevel::Debug, &format!("decision {json}"));
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .borrow_mut()
                .count_request(decision, served, fetches);
        }
    }

    /// Sets the routing header, replacing every value the client sent (a
    /// client must never pick the cluster), and makes Envoy route again.
    fn route(&mut self, loaded: &Loaded, cluster: &str, fallback: Option<&str>) -> Action {
        let policy = loaded.router.policy();
        if let Some(name) = policy.fallback_header() {
            // Without a runner-up a retry stays where the request went.
            let value = fallback.unwrap_or(cluster);
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
        }
        let set = hostcalls::set_map_value(
            MapType::HttpRequestHeaders,
            policy.routing_header(),
            Some(cluster),
        );
        if let Err(status) = set {
            // Whatever the client put in the header must not route.
            log(
                policy.log_level(),
                LogLevel::Error,
                &format!("could not set the routing header: {status:?}"),
            );
            self.send_http_response(
                500,
                vec![("content-type", "application/json")],
                Some(br#"{"error":"internal","message":"celroute could not set the routing header"}"#),
            );
            return Action::Pause;
        }
        // Envoy picked its route before this filter ran; make it look again.
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        Action::Continue
    }

    /// Answers a denied request locally: it never leaves the proxy.
    fn deny(&mut self, loaded: &Loaded, decision: &Decision, status: u16) -> Action {
        let body = decision.deny_body();
        let mut headers = vec![("content-type", "application/json")];
        let value = loaded
            .router
            .policy()
            .decision_header()
            .map(|name| (name, decision_header_value(decision, loaded)));
        if let Some((name, value)) = &value {
            headers.push((name, value.as_str()));
        }
        self.send_http_response(u32::from(status), headers, Some(body.as_bytes()));
        Action::Pause
    }
}

/// `cluster=gcp-europe-west4; rule=reasoning; policy=<version>`
fn decision_header_value(decision: &Decision, loaded: &Loaded) -> String {
    let outcome = match &decision.outcome {
        Outcome::Route { cluster } => format!("cluster={cluster}"),
        Outcome::Deny { status, .. } => format!("deny={status}"),
    };
    format!(
        "{outcome}; rule={}; policy={}",
        decision.rule,
        loaded.router.policy().version()
    )
}
