//! The host side of the proxy-wasm ABI 0.2.1, and the WASI preview1 calls a
//! Rust `wasm32-wasip1` module imports, with the semantics Envoy gives them.
//! One file per interface, each adding its functions to the linker:
//!
//! - `logging.rs`: `proxy_log`, the log level;
//! - `timers.rs`: the clock and the tick period;
//! - `http.rs`: header maps and bodies;
//! - `properties.rs`: request and connection properties;
//! - `shared.rs`: shared data and queues (shared by every VM of an environment);
//! - `stream.rs`: continuing, closing and answering a stream, contexts, foreign functions;
//! - `callouts.rs`: HTTP and gRPC callouts;
//! - `metrics.rs`: counters, gauges and histograms;
//! - `wasi.rs`: WASI preview1;
//! - `memory.rs`: guest memory, bounds-checked.
//!
//! Every guest pointer is bounds-checked: a bad one is answered with
//! `InvalidMemoryAccess`, as Envoy answers it, never with a host panic.

mod callouts;
mod http;
mod logging;
mod memory;
mod metrics;
mod properties;
mod shared;
mod stream;
mod timers;
mod wasi;

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::Linker;

use crate::environment::Environment;
use crate::exchange::Exchange;
pub use crate::exchange::LocalResponse;
pub use crate::wire::{deserialize_map, serialize_map, HeaderMap};

/// proxy-wasm status codes (`WasmResult` in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// Header maps, by the ABI's `map_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    GrpcInitialMetadata,
    GrpcTrailingMetadata,
    HttpCallResponseHeaders,
    HttpCallResponseTrailers,
}

impl MapType {
    pub(super) fn from_abi(value: i32) -> Option<MapType> {
        Some(match value {
            0 => MapType::RequestHeaders,
            1 => MapType::RequestTrailers,
            2 => MapType::ResponseHeaders,
            3 => MapType::ResponseTrailers,
            4 => MapType::GrpcInitialMetadata,
            5 => MapType::GrpcTrailingMetadata,
            6 => MapType::HttpCallResponseHeaders,
            7 => MapType::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// One line the guest logged (proxy_log, or stdout/stderr through WASI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// 0 trace, 1 debug, 2 info, 3 warn, 4 error, 5 critical.
    pub level: u32,
    pub message: String,
}

impl LogLine {
    pub fn level_name(&self) -> &'static str {
        match self.level {
            0 => "trace",
            1 => "debug",
            2 => "info",
            3 => "warn",
            4 => "error",
            _ => "critical",
        }
    }
}

/// An HTTP call the guest dispatched; answered by the test script, or never.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub token: u32,
    /// The context that dispatched it, which its answer goes to.
    pub context: u32,
    pub upstream: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
    /// When it was dispatched, on the environment's clock (nanoseconds).
    pub dispatched_at: u64,
    /// Its answer (or failure) was delivered.
    pub answered: bool,
}

/// Where a gRPC call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Pending,
    Answered,
    /// The guest cancelled it (`proxy_grpc_cancel`): no answer is delivered.
    Cancelled,
}

/// A gRPC stream the guest opened (`proxy_grpc_stream`), with the
/// messages it sent.
#[derive(Debug, Clone)]
pub struct GrpcStream {
    pub token: u32,
    pub context: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: HeaderMap,
    pub sent: Vec<Vec<u8>>,
    /// The guest ended its side (`end_stream`, or `proxy_grpc_close`).
    pub local_closed: bool,
    pub state: CallState,
}

/// A unary gRPC call the guest dispatched (`proxy_grpc_call`).
#[derive(Debug, Clone)]
pub struct GrpcCall {
    pub token: u32,
    pub context: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub metadata: HeaderMap,
    pub message: Vec<u8>,
    pub timeout_ms: u32,
    /// When it was dispatched, on the environment's clock (nanoseconds).
    pub dispatched_at: u64,
    pub state: CallState,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    /// 0 counter, 1 gauge, 2 histogram.
    pub kind: u32,
    pub value: i64,
}

/// Serial numbers for VMs, unique in the process.
static NEXT_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Everything the host knows about the VM and the request in flight.
pub struct HostState {
    /// This VM's serial number (which VM registered a shared queue).
    pub serial: u64,
    pub plugin_configuration: Vec<u8>,
    pub vm_configuration: Vec<u8>,
    pub logs: Vec<LogLine>,
    /// The log level reported to the guest (`proxy_get_log_level`).
    pub log_level: u32,
    /// Reports received on the `celroute_report` foreign function.
    pub reports: Vec<serde_json::Value>,
    /// How often the guest called the `clear_route_cache` foreign function.
    pub route_cache_clears: u32,
    pub metrics: Vec<Metric>,
    /// Shared data and queues, the clock and the scripted network, shared
    /// with every VM started from the same environment.
    pub environment: Environment,
    pub http_calls: Vec<HttpCall>,
    pub grpc_calls: Vec<GrpcCall>,
    pub grpc_streams: Vec<GrpcStream>,
    /// The message of the `proxy_on_grpc_receive` being delivered.
    pub grpc_receive: Vec<u8>,
    /// The metadata of the `proxy_on_grpc_receive_*_metadata` being delivered.
    pub grpc_initial_metadata: HeaderMap,
    pub grpc_trailing_metadata: HeaderMap,
    /// The root context answered false to `proxy_on_done` and has not
    /// called `proxy_done` yet.
    pub done_pending: bool,
    pub tick_period_ms: u32,
    pub effective_context: u32,
    /// The context of the callback under way (its first argument).
    pub current_context: u32,
    pub next_token: u32,
    /// The request in flight, if any.
    pub exchange: Exchange,
    /// The body of the `proxy_on_http_call_response` being delivered.
    pub http_call_response: (HeaderMap, Vec<u8>, HeaderMap),
    /// `proxy_get_status` answer during `proxy_on_grpc_close`.
    pub grpc_status: (u32, Vec<u8>),
    pub limits: wasmtime::StoreLimits,
    random_state: u64,
}

impl HostState {
    pub fn new(plugin_configuration: Vec<u8>, environment: Environment) -> HostState {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        HostState {
            serial: NEXT_SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            plugin_configuration,
            vm_configuration: Vec::new(),
            logs: Vec::new(),
            log_level: 0,
            reports: Vec::new(),
            route_cache_clears: 0,
            metrics: Vec::new(),
            environment,
            http_calls: Vec::new(),
            grpc_calls: Vec::new(),
            grpc_streams: Vec::new(),
            grpc_receive: Vec::new(),
            grpc_initial_metadata: Vec::new(),
            grpc_trailing_metadata: Vec::new(),
            done_pending: false,
            tick_period_ms: 0,
            effective_context: 0,
            current_context: 0,
            next_token: 1,
            exchange: Exchange::default(),
            http_call_response: Default::default(),
            grpc_status: (0, Vec::new()),
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(1 << 30)
                .instances(1)
                .build(),
            random_state: seed | 1,
        }
    }

    pub(super) fn map(&mut self, map: MapType) -> Option<&mut HeaderMap> {
        Some(match map {
            MapType::RequestHeaders => &mut self.exchange.request_headers,
            MapType::RequestTrailers => &mut self.exchange.request_trailers,
            MapType::ResponseHeaders => &mut self.exchange.response_headers,
            MapType::ResponseTrailers => &mut self.exchange.response_trailers,
            MapType::HttpCallResponseHeaders => &mut self.http_call_response.0,
            MapType::HttpCallResponseTrailers => &mut self.http_call_response.2,
            MapType::GrpcInitialMetadata => &mut self.grpc_initial_metadata,
            MapType::GrpcTrailingMetadata => &mut self.grpc_trailing_metadata,
        })
    }

    /// A new token for a callout, gRPC call or stream.
    pub(super) fn take_token(&mut self) -> u32 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    pub(super) fn next_random(&mut self) -> u64 {
        // xorshift64*: test randomness, not cryptography.
        let mut x = self.random_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random_state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Adds every proxy-wasm and WASI import this host provides to `linker`.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    logging::add_to_linker(linker)?;
    timers::add_to_linker(linker)?;
    http::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    shared::add_to_linker(linker)?;
    stream::add_to_linker(linker)?;
    callouts::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}
