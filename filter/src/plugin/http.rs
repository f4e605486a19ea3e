//! One request: decide, then route (set the header, clear the route cache)
//! or deny (a local reply); report the decision on the response.

use std::rc::Rc;
use std::sync::Arc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::ProxyHost;
use super::metrics::Metrics;
use super::report::report;
use super::{log, Loaded};
use crate::engine::{Decision, LogLevel, Outcome, Served};

pub(super) struct Request {
    pub(super) loaded: Option<Rc<Loaded>>,
    pub(super) metrics: Option<Rc<std::cell::RefCell<Metrics>>>,
    pub(super) decision: Option<Arc<Decision>>,
}

impl Context for Request {}

impl HttpContext for Request {
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
            Outcome::Route { cluster } => self.route(&loaded, cluster),
            Outcome::Deny { status, .. } => self.deny(&loaded, &decision, *status),
        };
        self.decision = Some(decision);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
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
    fn route(&mut self, loaded: &Loaded, cluster: &str) -> Action {
        let policy = loaded.router.policy();
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
