//! The proxy-wasm adapter: Envoy's callbacks in, the engine's decision out.
//!
//! Kept thin on purpose: load the policy in `on_configure`, and per request
//! strip the client's routing header, decide, then set the header and clear
//! the route cache, or send the denial.

use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as HostLevel, MapType, MetricType};

use crate::engine::{AttributeHost, Decision, LogLevel, Outcome, Policy};

proxy_wasm::main! {{
    // The engine filters by the policy's own log level; let every line reach the host.
    proxy_wasm::set_log_level(HostLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Metrics of this VM; defined once, shared by every policy it loads.
struct Metrics {
    denials: Option<u32>,
    evaluation_errors: Option<u32>,
    configurations_accepted: Option<u32>,
    configurations_rejected: Option<u32>,
    policy_version: Option<u32>,
    programs_compiled: Option<u32>,
    attribute_fetches: Option<u32>,
    /// Per-cluster and per-rule decision counters, by name.
    named: HashMap<String, Option<u32>>,
}

impl Metrics {
    fn new() -> Metrics {
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
            named: HashMap::new(),
        }
    }

    fn add(id: Option<u32>, n: u64) {
        if let (Some(id), Ok(n)) = (id, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn add_named(&mut self, name: String) {
        let id = *self
            .named
            .entry(name)
            .or_insert_with_key(|name| hostcalls::define_metric(MetricType::Counter, name).ok());
        Metrics::add(id, 1);
    }
}

struct Loaded {
    policy: Policy,
    /// The host takes decision reports (policy-host does; Envoy does not).
    reporting: bool,
}

/// Foreign function through which a policy-testing host (policy-host)
/// receives the filter's own account of policies and decisions. Envoy has
/// no such function: the call at configure time answers NotFound, and the
/// filter then never calls it per request.
const REPORT: &str = "celroute_report";

fn report(kind: &str, payload: serde_json::Value) -> bool {
    let body = serde_json::json!({ "kind": kind, "report": payload }).to_string();
    hostcalls::call_foreign_function(REPORT, Some(body.as_bytes())).is_ok()
}

#[derive(Default)]
struct Root {
    loaded: Option<Rc<Loaded>>,
    metrics: Option<Rc<std::cell::RefCell<Metrics>>>,
}

impl Root {
    fn metrics(&mut self) -> Rc<std::cell::RefCell<Metrics>> {
        self.metrics
            .get_or_insert_with(|| Rc::new(std::cell::RefCell::new(Metrics::new())))
            .clone()
    }
}

fn log(threshold: LogLevel, level: LogLevel, message: &str) {
    if level < threshold {
        return;
    }
    let host_level = match level {
        LogLevel::Trace => HostLevel::Trace,
        LogLevel::Debug => HostLevel::Debug,
        LogLevel::Info => HostLevel::Info,
        LogLevel::Warn => HostLevel::Warn,
        LogLevel::Error | LogLevel::Off => HostLevel::Error,
    };
    let _ = hostcalls::log(host_level, message);
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        let metrics = self.metrics();
        let threshold = self
            .loaded
            .as_ref()
            .map_or(LogLevel::Info, |l| l.policy.log_level());
        let text = match self.get_plugin_configuration() {
            Some(bytes) => String::from_utf8(bytes),
            None => Ok(String::new()),
        };
        let result = match text {
            Ok(text) => Policy::load(&text),
            Err(e) => Err(crate::engine::PolicyError::new(
                "policy",
                format!(
                    "the configuration is not UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            )
            .into()),
        };
        match result {
            Ok(policy) => {
                let m = metrics.borrow();
                Metrics::add(m.configurations_accepted, 1);
                Metrics::set(m.policy_version, policy.version_number());
                Metrics::add(m.programs_compiled, policy.programs_compiled() as u64);
                drop(m);
                log(
                    policy.log_level(),
                    LogLevel::Info,
                    &format!(
                        "loaded policy {}version {}: {} clusters, {} rules, {} CEL programs; reads {}",
                        policy.name().map(|n| format!("'{n}' ")).unwrap_or_default(),
                        policy.version(),
                        policy.cluster_names().count(),
                        policy.rule_names().count(),
                        policy.programs_compiled(),
                        describe_reads(&policy),
                    ),
                );
                let reporting = report(
                    "policy",
                    serde_json::to_value(policy.description()).unwrap_or_default(),
                );
                self.loaded = Some(Rc::new(Loaded { policy, reporting }));
                true
            }
            Err(errors) => {
                Metrics::add(metrics.borrow().configurations_rejected, 1);
                report(
                    "rejected",
                    serde_json::to_value(&errors.0).unwrap_or_default(),
                );
                log(
                    threshold.min(LogLevel::Error),
                    LogLevel::Error,
                    // Envoy keeps the configuration it had, if it had one.
                    &format!(
                        "policy rejected, the previous configuration stays in force: {errors}"
                    ),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request {
            loaded: self.loaded.clone(),
            metrics: self.metrics.clone(),
            decision: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn describe_reads(policy: &Policy) -> String {
    let reads = policy.referenced_attributes();
    if reads.is_empty() {
        "no request attribute".to_string()
    } else {
        reads.join(", ")
    }
}

struct Request {
    loaded: Option<Rc<Loaded>>,
    metrics: Option<Rc<std::cell::RefCell<Metrics>>>,
    decision: Option<Decision>,
}

/// Request attributes from the proxy, counting each host call.
struct ProxyHost {
    fetches: u64,
}

impl AttributeHost for ProxyHost {
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.fetches += 1;
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)> {
        self.fetches += 1;
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        self.fetches += 1;
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(loaded) = self.loaded.clone() else {
            // No valid policy was ever loaded: refuse rather than route blindly.
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
            return Action::Pause;
        };
        let policy = &loaded.policy;
        // A client must never pick the cluster: drop whatever it sent.
        let _ =
            hostcalls::set_map_value(MapType::HttpRequestHeaders, policy.routing_header(), None);

        let mut host = ProxyHost { fetches: 0 };
        let decision = policy.decide(
            &mut host,
            loaded.reporting || policy.log_level() <= LogLevel::Debug,
        );
        if loaded.reporting {
            report(
                "decision",
                serde_json::to_value(&decision).unwrap_or_default(),
            );
        }
        for error in &decision.errors {
            log(policy.log_level(), LogLevel::Warn, &error.to_string());
        }
        if policy.log_level() <= LogLevel::Debug {
            log(
                policy.log_level(),
                LogLevel::Debug,
                &format!(
                    "decision {}",
                    serde_json::to_string(&decision).unwrap_or_default()
                ),
            );
        }
        if let Some(metrics) = &self.metrics {
            let mut m = metrics.borrow_mut();
            Metrics::add(m.attribute_fetches, host.fetches);
            Metrics::add(m.evaluation_errors, decision.errors.len() as u64);
            if let Outcome::Deny { .. } = decision.outcome {
                Metrics::add(m.denials, 1);
            }
            if let Some(cluster) = decision.cluster() {
                m.add_named(format!("celroute.decisions.cluster.{cluster}"));
            }
            m.add_named(format!("celroute.decisions.rule.{}", decision.rule));
        }

        let action = match &decision.outcome {
            Outcome::Route { cluster } => {
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    policy.routing_header(),
                    Some(cluster),
                );
                // Envoy picked its route before this filter ran; make it look again.
                let _ = hostcalls::call_foreign_function("clear_route_cache", None);
                Action::Continue
            }
            Outcome::Deny { status, .. } => {
                let body = decision.deny_body();
                let mut headers = vec![("content-type", "application/json")];
                let value = policy
                    .decision_header()
                    .map(|name| (name, decision_header_value(&decision, &loaded)));
                if let Some((name, value)) = &value {
                    headers.push((name, value.as_str()));
                }
                self.send_http_response(u32::from(*status), headers, Some(body.as_bytes()));
                Action::Pause
            }
        };
        self.decision = Some(decision);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(loaded), Some(decision)) = (&self.loaded, &self.decision) {
            if let (Some(name), Outcome::Route { .. }) =
                (loaded.policy.decision_header(), &decision.outcome)
            {
                let value = decision_header_value(decision, loaded);
                let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(&value));
            }
        }
        Action::Continue
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
        loaded.policy.version()
    )
}
