//! One request: decide, then route (set the header, clear the route cache)
//! or deny (a local reply); report the decision on the response.

use std::rc::Rc;
use std::sync::Arc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::host::ProxyHost;
use super::live::{now_ms, Live};
use super::metrics::{stat_name, Metrics};
use super::report::report;
use super::spend;
use super::{log, Loaded};
use crate::engine::decision_log::{UsageRecord, DECISION_PROPERTY, USAGE_PROPERTY};
use crate::engine::{
    error_body, BodyError, BodySummary, Decision, LogLevel, Outcome, Policy, Served, SpendUnit,
};
use crate::signals::{parse_orca, Completion, ORCA_FORMAT_HEADER, ORCA_HEADER};
use crate::usage::{Framing, UsageScanner};

pub(super) struct Request {
    pub(super) loaded: Option<Rc<Loaded>>,
    pub(super) metrics: Option<Rc<std::cell::RefCell<Metrics>>>,
    pub(super) decision: Option<Arc<Decision>>,
    /// Live bookkeeping, when the policy reads live state.
    pub(super) live: Option<Rc<std::cell::RefCell<Live>>>,
    /// Where this request went and when, for live observation.
    pub(super) routed: Option<Routed>,
    /// Bytes of body received while the request is held for its body (a
    /// policy that reads `request.body`); `None` when it is not held.
    pub(super) held: Option<usize>,
    /// Usage of a routed request, under a policy that counts it.
    pub(super) counting: Option<Box<Counting>>,
}

/// What a routed request used: read from its bodies as they pass.
pub(super) struct Counting {
    cluster: String,
    /// The value of `usage.key_header`, made fit for a stat name.
    key: Option<String>,
    bytes_in: u64,
    bytes_out: u64,
    /// `None` until the response headers say the body can carry usage.
    scanner: Option<UsageScanner>,
    /// Each budget's key for this request, in the policy's order.
    budget_keys: Vec<String>,
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
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        // The response is never held: each chunk is scanned as it passes.
        if let Some(counting) = &mut self.counting {
            counting.bytes_out += body_size as u64;
            if let Some(scanner) = &mut counting.scanner {
                if body_size > 0 {
                    if let Ok(Some(chunk)) =
                        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, body_size)
                    {
                        scanner.feed(&chunk);
                    }
                }
            }
        }
        if end_of_stream {
            // Charged before the client has the last byte, so that its
            // next request already sees the spend.
            self.charge();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        self.charge();
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

    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let Some(loaded) = self.loaded.clone() else {
            return self.no_policy();
        };
        if !loaded.router.policy().reads_body() {
            return self.decide(&loaded, None);
        }
        if end_of_stream {
            return self.decide(&loaded, Some(BodySummary::empty().encode()));
        }
        // The decision waits for the body; until then nothing is routed,
        // whatever routing header the client sent.
        self.held = Some(0);
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(_), Some(loaded)) = (self.held, self.loaded.clone()) else {
            // Not held: each call brings the next chunk.
            if let Some(counting) = &mut self.counting {
                counting.bytes_in += body_size as u64;
            }
            return Action::Continue;
        };
        self.held = Some(body_size);
        log(
            loaded.router.policy().log_level(),
            LogLevel::Trace,
            &format!("request body held: {body_size} bytes, end of stream: {end_of_stream}"),
        );
        let limit = loaded.router.policy().max_body_bytes();
        if body_size as u64 > limit {
            self.held = None;
            return self.refuse(&loaded, &BodySummary::too_large(limit));
        }
        if !end_of_stream {
            // Envoy keeps the body buffered until the decision.
            return Action::Pause;
        }
        self.body_complete(&loaded, body_size)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match (self.held, self.loaded.clone()) {
            (Some(size), Some(loaded)) => self.body_complete(&loaded, size),
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.observe_response();
        if let Some(counting) = &mut self.counting {
            counting.scanner =
                hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "content-type")
                    .ok()
                    .flatten()
                    .and_then(|ct| Framing::of(&ct))
                    .map(UsageScanner::new);
        }
        if end_of_stream {
            self.charge();
        }
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
    /// Decides, then routes or denies. `body` is the encoded
    /// `request.body` for a policy that reads it.
    fn decide(&mut self, loaded: &Rc<Loaded>, body: Option<Vec<u8>>) -> Action {
        let policy = loaded.router.policy();
        let budgets = policy.budgets();
        let mut host = ProxyHost {
            fetches: 0,
            headers: None,
            body,
            budgets,
            now_secs: if budgets.is_empty() {
                0
            } else {
                now_ms(self.get_current_time()) / 1000
            },
        };
        let decided = loaded.router.decide_recorded(
            &mut host,
            loaded.reporting || policy.log_level() <= LogLevel::Debug,
            true,
        );
        let (decision, served) = (decided.decision, decided.served);
        if let Some(record) = decided.record {
            set_record(DECISION_PROPERTY, &record);
        }
        self.observe(loaded, &decision, served, host.fetches);
        let action = match &decision.outcome {
            Outcome::Route { cluster } => {
                self.started(cluster);
                if policy.counts_usage() {
                    self.counting = Some(Box::new(Counting::new(cluster, policy, &mut host)));
                }
                self.route(loaded, cluster, decision.fallback.as_deref())
            }
            Outcome::Deny { status, .. } => self.deny(loaded, &decision, *status),
        };
        self.decision = Some(decision);
        action
    }

    /// Counts a routed request's usage: tokens, their cost at the cluster's
    /// price, and bytes, per cluster and per key.
    fn charge(&mut self) {
        let (Some(counting), Some(loaded), Some(metrics)) =
            (self.counting.take(), &self.loaded, &self.metrics)
        else {
            return;
        };
        let policy = loaded.router.policy();
        let mut metrics = metrics.borrow_mut();
        let usage = counting.scanner.as_ref().and_then(UsageScanner::usage);
        // The live price when the policy reads one and it is fresh, else the list price.
        let price = (loaded.router)
            .live_number(&counting.cluster, "price_per_1k_tokens")
            .or_else(|| policy.cluster_number(&counting.cluster, "price_per_1k_tokens"))
            .unwrap_or(0.0);
        if policy.keeps_decision_log() {
            let record = UsageRecord {
                prompt_tokens: usage.map_or(0, |u| u.prompt_tokens),
                completion_tokens: usage.map_or(0, |u| u.completion_tokens),
                price_per_1k_tokens: price,
                bytes_in: counting.bytes_in,
                bytes_out: counting.bytes_out,
                reported: usage.is_some(),
            };
            set_record(USAGE_PROPERTY, &record.to_json(&counting.cluster));
        }
        let egress = policy
            .cluster_number(&counting.cluster, "egress_per_gb")
            .unwrap_or(0.0);
        let counts = [
            (
                "celroute.usage.prompt_tokens",
                usage.map_or(0, |u| u.prompt_tokens),
            ),
            (
                "celroute.usage.completion_tokens",
                usage.map_or(0, |u| u.completion_tokens),
            ),
            (
                "celroute.usage.cost_micros",
                usage.map_or(0, |u| micros(SpendUnit::Cost.amount(u.total(), price, 0))),
            ),
            ("celroute.usage.bytes_in", counting.bytes_in),
            ("celroute.usage.bytes_out", counting.bytes_out),
            (
                "celroute.usage.egress_cost_micros",
                micros(counting.bytes_out as f64 * egress / 1e9),
            ),
            (
                "celroute.usage.responses_with_usage",
                u64::from(usage.is_some()),
            ),
        ];
        if policy.usage().is_some() {
            for (what, n) in counts.into_iter().filter(|(_, n)| *n > 0) {
                metrics.count_usage(what, "cluster", &counting.cluster, n);
                if let Some(key) = &counting.key {
                    metrics.count_usage(what, "key", key, n);
                }
            }
        }
        if policy.budgets().is_empty() {
            return;
        }
        // Spend is charged when the response ends: a request in flight has
        // not spent yet (docs/inference.md#budgets).
        let now_secs = now_ms(self.get_current_time()) / 1000;
        let tokens = usage.map_or(0, |u| u.total());
        for (budget, key) in policy.budgets().iter().zip(&counting.budget_keys) {
            if !budget.charges(&counting.cluster) {
                continue;
            }
            let amount = budget.unit.amount(tokens, price, counting.bytes_out);
            if amount > 0.0 && !spend::charge(budget, key, amount, now_secs) {
                log(
                    policy.log_level(),
                    LogLevel::Warn,
                    &format!(
                        "budget '{}': could not charge {amount} to '{key}'",
                        budget.name
                    ),
                );
            }
        }
    }

    /// The held body is complete: read it, then decide.
    fn body_complete(&mut self, loaded: &Rc<Loaded>, size: usize) -> Action {
        self.held = None;
        let body = if size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let content_type =
            hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "content-type")
                .ok()
                .flatten();
        let action = match BodySummary::read(&body, content_type.as_deref()) {
            Ok(summary) => self.decide(loaded, Some(summary.encode())),
            Err(error) => self.refuse(loaded, &error),
        };
        if let Some(counting) = &mut self.counting {
            counting.bytes_in = size as u64;
        }
        action
    }

    /// Answers a request whose body the policy cannot read: a denial by
    /// the reserved rule `request-body`, with the body error's code.
    fn refuse(&mut self, loaded: &Loaded, error: &BodyError) -> Action {
        if let Some(metrics) = &self.metrics {
            metrics.borrow_mut().count_body_refused();
        }
        let decision = Arc::new(error.decision());
        if let Some(record) = loaded.router.refusal_record(&decision, error.code) {
            set_record(DECISION_PROPERTY, &record);
        }
        self.observe(loaded, &decision, Served::Evaluated, 0);
        let body = error_body(
            error.status,
            error.code,
            &error.message,
            Some(&decision.rule),
        );
        let action = self.reply(loaded, &decision, error.status, &body);
        self.decision = Some(decision);
        action
    }

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
            Some(
                error_body(
                    503,
                    "no_policy",
                    "celroute has no valid policy loaded",
                    None,
                )
                .as_bytes(),
            ),
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
                Some(
                    error_body(
                        500,
                        "internal",
                        "celroute could not set the routing header",
                        None,
                    )
                    .as_bytes(),
                ),
            );
            return Action::Pause;
        }
        // Envoy picked its route before this filter ran; make it look again.
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        Action::Continue
    }

    /// Answers a denied request locally: it never leaves the proxy.
    fn deny(&mut self, loaded: &Loaded, decision: &Decision, status: u16) -> Action {
        self.reply(loaded, decision, status, &decision.deny_body())
    }

    /// A local JSON reply, with the decision header when the policy asks for it.
    fn reply(&mut self, loaded: &Loaded, decision: &Decision, status: u16, body: &str) -> Action {
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

impl Counting {
    fn new(cluster: &str, policy: &Policy, host: &mut ProxyHost) -> Counting {
        let key = policy
            .usage()
            .and_then(|usage| usage.key_header.as_deref())
            .map(|name| {
                host.header(name)
                    .map(stat_name)
                    .unwrap_or_else(|| "none".into())
            });
        let budget_keys = (policy.budgets().iter())
            .map(|budget| spend::key_of(budget, |name| host.header(name).map(<[u8]>::to_vec)))
            .collect();
        Counting {
            cluster: cluster.to_string(),
            key,
            bytes_in: 0,
            bytes_out: 0,
            scanner: None,
            budget_keys,
        }
    }
}

/// Hands a record to the host as a property: Envoy keeps it as the filter
/// state `wasm.<name>`, which access logs read (docs/decision-logs.md).
fn set_record(name: &str, record: &str) {
    let _ = hostcalls::set_property(vec![name], Some(record.as_bytes()));
}

/// An amount of currency in millionths, rounded (stats are integers).
fn micros(amount: f64) -> u64 {
    // A float-to-int `as` saturates; NaN becomes 0.
    (amount * 1e6).round() as u64
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
