//! The root context: loads (or refuses) the policy in `on_configure`, flushes
//! stats on ticks, creates the HTTP contexts.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use super::http::Request;
use super::live::{now_ms, Live};
use super::metrics::{Metrics, METRICS_FLUSH_PERIOD};
use super::report::report;
use super::{log, Loaded};
use crate::engine::{LogLevel, Policy, Router};

#[derive(Default)]
pub(super) struct Root {
    pub(super) loaded: Option<Rc<Loaded>>,
    pub(super) metrics: Option<Rc<std::cell::RefCell<Metrics>>>,
    /// Live observations and the feed poll; kept across policy reloads.
    pub(super) live: Rc<std::cell::RefCell<Live>>,
}

impl Root {
    pub(super) fn metrics(&mut self) -> Rc<std::cell::RefCell<Metrics>> {
        self.metrics
            .get_or_insert_with(|| Rc::new(std::cell::RefCell::new(Metrics::new())))
            .clone()
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Some(loaded) = &self.loaded {
            let now = now_ms(self.get_current_time());
            self.live
                .borrow_mut()
                .answered(token, body_size, &loaded.router, now);
        }
    }

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
        let Some(loaded) = &self.loaded else { return };
        let router = &loaded.router;
        if !router.policy().reads_live() {
            return;
        }
        let now = now_ms(self.get_current_time());
        self.live.borrow_mut().tick(router, now);
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
                let router = Router::new(policy);
                if router.policy().reads_live() {
                    // The shared state outlives the old policy: start from it.
                    let now = now_ms(self.get_current_time());
                    self.live.borrow_mut().now = now;
                    Live::refresh(&router, now);
                }
                let observe = super::Observe::of(router.policy());
                self.loaded = Some(Rc::new(Loaded {
                    router,
                    reporting,
                    observe,
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
        let live = self
            .loaded
            .as_ref()
            .filter(|l| l.observe.outcomes)
            .map(|_| self.live.clone());
        Some(Box::new(Request {
            loaded: self.loaded.clone(),
            metrics: self.metrics.clone(),
            decision: None,
            live,
            routed: None,
            held: None,
            counting: None,
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
