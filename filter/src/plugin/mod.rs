//! The proxy-wasm adapter: Envoy's callbacks in, the engine's decision out.
//!
//! Kept thin on purpose: load the policy in `on_configure` (`root.rs`), and
//! per request (`http.rs`) strip the client's routing header, decide, then
//! set the header and clear the route cache, or send the denial. Request
//! attributes come from the host through `host.rs`; stats are batched in
//! `metrics.rs`; `report.rs` speaks to policy-testing hosts.

mod host;
mod http;
mod metrics;
mod report;
mod root;

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
