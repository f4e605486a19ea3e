//! The proxy-wasm adapter: Envoy's callbacks in, the engine's decision out.
//!
//! Kept thin on purpose: load the policy in `on_configure`, and per request
//! strip the client's routing header, decide, then set the header and clear
//! the route cache, or send the denial.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel as HostLevel, MapType, MetricType};

use crate::engine::{AttributeHost, Decision, LogLevel, Outcome, Policy, Router, Served};

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
    decision_cache_hits: Option<u32>,
    decision_cache_misses: Option<u32>,
    /// Decision counters by cluster and by rule name (defined on first use).
    clusters: HashMap<String, Option<u32>>,
    rules: HashMap<String, Option<u32>>,
    /// Per-request counts not yet given to the host, by metric id: a host
    /// call per counter per request would cost more than the decision.
    pending: HashMap<u32, u64>,
}

/// How often per-request counters reach the host's stats.
const METRICS_FLUSH_PERIOD: Duration = Duration::from_millis(100);

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
            decision_cache_hits: counter("celroute.decision_cache.hits"),
            decision_cache_misses: counter("celroute.decision_cache.misses"),
            clusters: HashMap::new(),
            rules: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    fn add(id: Option<u32>, n: u64) {
        if let (Some(id), Ok(n)) = (id, i64::try_from(n)) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    /// Counts `n` towards a per-request counter, given to the host at the next flush.
    fn count(&mut self, id: Option<u32>, n: u64) {
        if let Some(id) = id {
            *self.pending.entry(id).or_insert(0) += n;
        }
    }

    fn flush(&mut self) {
        for (id, n) in self.pending.drain() {
            Metrics::add(Some(id), n);
        }
    }

    fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// Counts one decision for `name` in `metrics` (`celroute.decisions.<kind>.<name>`),
    /// looking the counter up without allocating once it is defined.
    fn count_decision(&mut self, kind: &str, name: &str) {
        let metrics = if kind == "cluster" {
            &mut self.clusters
        } else {
            &mut self.rules
        };
        let id = match metrics.get(name) {
            Some(id) => *id,
            None => {
                let id = hostcalls::define_metric(
                    MetricType::Counter,
                    &format!("celroute.decisions.{kind}.{name}"),
                )
                .ok();
                metrics.insert(name.to_string(), id);
                id
            }
        };
        self.count(id, 1);
    }
}

struct Loaded {
    router: Router,
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

impl Context for Root {
    fn on_done(&mut self) -> bool {
        if let Some(metrics) = &self.metrics {
            metrics.borrow_mut().flush();
        }
        true
    }
}

impl RootContext for Root {
    fn on_tick(&mut self) {
        if let Some(metrics) = &self.metrics {
            metrics.borrow_mut().flush();
        }
    }

    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        self.set_tick_period(METRICS_FLUSH_PERIOD);
        let metrics = self.metrics();
        let threshold = self
            .loaded
            .as_ref()
            .map_or(LogLevel::Info, |l| l.router.policy().log_level());
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
                        "loaded policy {}version {}: {} clusters, {} rules, {} CEL programs; reads {}; decision cache {}",
                        policy.name().map(|n| format!("'{n}' ")).unwrap_or_default(),
                        policy.version(),
                        policy.cluster_names().count(),
                        policy.rule_names().count(),
                        policy.programs_compiled(),
                        describe_reads(&policy),
                        match policy.decision_cache_size() {
                            0 => "off".to_string(),
                            n => format!("{n} entries"),
                        },
                    ),
                );
                let reporting = report(
                    "policy",
                    serde_json::to_value(policy.description()).unwrap_or_default(),
                );
                self.loaded = Some(Rc::new(Loaded {
                    router: Router::new(policy),
                    reporting,
                }));
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
    decision: Option<Arc<Decision>>,
}

/// Request attributes from the proxy, counting each host call.
///
/// A call into the host costs more in V8 than a decision from the cache, so
/// the request headers come in one call, on first use, and the request
/// attributes Envoy itself derives from pseudo-headers (`request.path`,
/// `url_path`, `host`, `method`, `scheme`) are read from them the way Envoy
/// computes them.
struct ProxyHost {
    fetches: u64,
    headers: Option<Vec<(String, Vec<u8>)>>,
}

impl ProxyHost {
    fn headers(&mut self) -> &[(String, Vec<u8>)] {
        if self.headers.is_none() {
            self.fetches += 1;
            self.headers =
                Some(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default());
        }
        self.headers.as_deref().unwrap_or_default()
    }

    /// The first value of a header, as Envoy's single-header lookup gives it.
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.headers()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

impl AttributeHost for ProxyHost {
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.header(name).map(<[u8]>::to_vec)
    }

    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)> {
        self.headers().to_vec()
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let pseudo = match path {
            ["request", "path"] | ["request", "url_path"] => Some(":path"),
            ["request", "host"] => Some(":authority"),
            ["request", "method"] => Some(":method"),
            ["request", "scheme"] => Some(":scheme"),
            _ => None,
        };
        match pseudo {
            Some(name) => {
                let value = self.header(name)?;
                let value = if path[1] == "url_path" {
                    // Envoy's url_path: the path without its query string.
                    let end = value.iter().position(|&b| b == b'?').unwrap_or(value.len());
                    &value[..end]
                } else {
                    value
                };
                Some(value.to_vec())
            }
            None => {
                self.fetches += 1;
                get_property(path)
            }
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> proxy_wasm::types::Status;
}

/// A host property, telling an empty value from an absent one.
///
/// Envoy answers an empty value (`request.query` of a path without `?`,
/// `connection.requested_server_name` without SNI) with `Ok` and no data,
/// which the SDK's `get_property` reads as absent; Envoy's own CEL reads it
/// as the empty string, and so does celroute.
fn get_property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the address and size of a buffer it allocated
    // with proxy_on_memory_allocate, whose ownership passes to the guest.
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    match status {
        proxy_wasm::types::Status::Ok if data.is_null() || size == 0 => Some(Vec::new()),
        // SAFETY: as above; the buffer is `size` bytes allocated by the guest's allocator.
        proxy_wasm::types::Status::Ok => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
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
        let policy = loaded.router.policy();
        // A client must never pick the cluster: a routed request gets its
        // header replaced (all values the client sent go), and a denied one
        // never leaves the proxy.
        let mut host = ProxyHost {
            fetches: 0,
            headers: None,
        };
        let (decision, served) = loaded.router.decide(
            &mut host,
            loaded.reporting || policy.log_level() <= LogLevel::Debug,
        );
        if loaded.reporting {
            report(
                "decision",
                serde_json::to_value(&*decision).unwrap_or_default(),
            );
        }
        for error in &decision.errors {
            log(policy.log_level(), LogLevel::Warn, error);
        }
        if policy.log_level() <= LogLevel::Debug {
            log(
                policy.log_level(),
                LogLevel::Debug,
                &format!(
                    "decision {}",
                    serde_json::to_string(&*decision).unwrap_or_default()
                ),
            );
        }
        if let Some(metrics) = &self.metrics {
            let mut m = metrics.borrow_mut();
            let id = m.attribute_fetches;
            m.count(id, host.fetches);
            if !decision.errors.is_empty() {
                let id = m.evaluation_errors;
                m.count(id, decision.errors.len() as u64);
            }
            let id = match served {
                Served::FromCache => m.decision_cache_hits,
                Served::Missed => m.decision_cache_misses,
                Served::Evaluated => None,
            };
            m.count(id, 1);
            match &decision.outcome {
                Outcome::Route { cluster } => m.count_decision("cluster", cluster),
                Outcome::Deny { .. } => {
                    let id = m.denials;
                    m.count(id, 1);
                }
            }
            m.count_decision("rule", &decision.rule);
        }

        let action = match &decision.outcome {
            Outcome::Route { cluster } => {
                if let Err(status) = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    policy.routing_header(),
                    Some(cluster),
                ) {
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
                (loaded.router.policy().decision_header(), &decision.outcome)
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
        loaded.router.policy().version()
    )
}
