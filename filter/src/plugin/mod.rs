//! The proxy-wasm adapter: Envoy's callbacks in, the engine's decision out.
//!
//! Kept thin on purpose: load the policy in `on_configure` (`root.rs`), and
//! per request (`http.rs`) strip the client's routing header, decide, then
//! set the header and clear the route cache, or send the denial. Request
//! attributes come from the host through `host.rs`; stats are batched in
//! `metrics.rs`; `report.rs` speaks to policy-testing hosts.

mod host;
mod http;
mod live;
mod metrics;
mod report;
mod root;
mod shared;
mod spend;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel as HostLevel;

use crate::engine::{LogLevel, Router};

proxy_wasm::main! {{
    // The engine filters by the policy's own log level; let every line reach the host.
    proxy_wasm::set_log_level(HostLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}

pub(super) struct Loaded {
    pub(super) router: Router,
    /// The host takes decision reports (policy-host does; Envoy does not).
    pub(super) reporting: bool,
    /// What each routed request is observed for: only what the policy reads.
    pub(super) observe: Observe,
}

/// Per-request observation a policy pays for, by the live fields it reads.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Observe {
    /// How requests end (for the breaker, error rate, requests in flight).
    pub(super) outcomes: bool,
    /// The time to response headers (`latency_ms`).
    pub(super) latency: bool,
    /// Upstreams' ORCA load reports.
    pub(super) reports: bool,
}

impl Observe {
    pub(super) fn of(policy: &crate::engine::Policy) -> Observe {
        let reads = |field: &str| policy.reads_live_field(field);
        let latency = reads("latency_ms");
        let outcomes = latency
            || [
                "healthy",
                "breaker",
                "consecutive_failures",
                "error_rate",
                "in_flight",
            ]
            .iter()
            .any(|f| reads(f));
        // Any field an upstream may report: the built-in ones ORCA carries,
        // and named values (`named_metrics.<name>`).
        let reports = policy
            .live_field_names()
            .filter(|f| !crate::signals::feed::OBSERVED.contains(f) && *f != "price_per_1k_tokens")
            .any(reads);
        Observe {
            outcomes: outcomes || reports,
            latency,
            reports,
        }
    }
}

pub(super) fn log(threshold: LogLevel, level: LogLevel, message: &str) {
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
