//! The filter's lifecycle, driven the way Envoy drives it: VM start,
//! configure, then per request context create, request headers and body,
//! response headers and body, log, done, delete.
//!
//! Each callback runs with a fuel budget, so a runaway guest ends that
//! callback with an error naming it instead of hanging the host.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Val, ValType};

use crate::abi::{
    self, CallState, GrpcCall, GrpcStream, HeaderMap, HostState, HttpCall, LocalResponse, LogLine,
};
use crate::compile_cache;
use crate::environment::Environment;
use crate::exchange::Exchange;
use crate::request::RequestSpec;
use crate::upstream::{envoy_grpc_message, GrpcReply, GrpcStreamReply, Response};

/// The root context's id, as Envoy numbers it.
const ROOT: u32 = 1;

/// Instructions-ish a callback may spend (wasmtime fuel) before it is stopped.
pub const CALLBACK_FUEL: u64 = 400_000_000;
/// `on_configure` compiles the policy: it gets more.
pub const CONFIGURE_FUEL: u64 = 4_000_000_000;

/// A compiled filter module, ready to be instantiated any number of times.
pub struct FilterModule {
    engine: Engine,
    module: Module,
    linker: Linker<HostState>,
}

/// A guest fault: a trap, a runaway loop, a bad export, in a named callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFault {
    pub callback: String,
    pub message: String,
    /// What the guest logged before the fault.
    pub logs: Vec<LogLine>,
}

impl std::fmt::Display for GuestFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the filter failed in {}: {}",
            self.callback, self.message
        )
    }
}

impl std::error::Error for GuestFault {}

/// Why a VM did not start: a guest fault, or `on_configure` answering false.
#[derive(Debug, Clone)]
pub enum StartError {
    Fault(GuestFault),
    /// `on_configure` returned false: the configuration was rejected.
    Rejected {
        logs: Vec<LogLine>,
        reports: Vec<serde_json::Value>,
        /// What refusing it took.
        spent: Spent,
    },
}

/// What a callback took of the VM: wasmtime fuel (about one unit per
/// instruction, the same for the same module and input on any machine) and
/// the guest's linear memory when it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub fuel: u64,
    pub memory_bytes: u64,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Fault(fault) => fault.fmt(f),
            StartError::Rejected { logs, .. } => {
                write!(f, "the filter rejected its configuration")?;
                for line in logs.iter().filter(|l| l.level >= 3) {
                    write!(f, "\n  {}", line.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for StartError {}

impl FilterModule {
    /// Reads and compiles a `.wasm` file. The compiled code is cached beside
    /// it (`.policy-host-cache/`), keyed by the module's bytes, so later runs
    /// skip compilation.
    pub fn load(path: &Path) -> Result<FilterModule> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cache = path.parent().map(|dir| {
            dir.join(".policy-host-cache").join(format!(
                "{:016x}-{}.cwasm",
                celroute::engine::fnv1a64(&bytes),
                bytes.len()
            ))
        });
        FilterModule::build(&bytes, cache.as_deref())
            .with_context(|| format!("loading {}", path.display()))
    }

    /// Compiles a module (binary format) and checks that it is a
    /// proxy-wasm module whose imports this host provides.
    pub fn from_bytes(bytes: &[u8]) -> Result<FilterModule> {
        FilterModule::build(bytes, None)
    }

    fn build(bytes: &[u8], cache: Option<&Path>) -> Result<FilterModule> {
        let mut config = Config::new();
        config.consume_fuel(true);
        let engine = Engine::new(&config)?;
        let module = match cache.and_then(|c| compile_cache::cached(&engine, c)) {
            Some(module) => module,
            None => {
                let module = Module::new(&engine, bytes)
                    .map_err(anyhow::Error::from)
                    .context("not a valid WebAssembly module")?;
                if let Some(cache) = cache {
                    compile_cache::store_cached(&module, cache);
                }
                module
            }
        };
        let mut linker = Linker::new(&engine);
        abi::link(&mut linker)?;
        let mut missing = Vec::new();
        let mut probe = Store::new(&engine, HostState::new(Vec::new(), Environment::default()));
        for import in module.imports() {
            if linker
                .get(&mut probe, import.module(), import.name())
                .is_err()
            {
                missing.push(format!("{}.{}", import.module(), import.name()));
            }
        }
        if !missing.is_empty() {
            bail!(
                "the module imports {} that neither policy-host nor Envoy provides: {}",
                if missing.len() == 1 {
                    "a function"
                } else {
                    "functions"
                },
                missing.join(", ")
            );
        }
        let exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
        if !exports
            .iter()
            .any(|e| *e == "proxy_abi_version_0_2_1" || *e == "proxy_abi_version_0_2_0")
        {
            bail!("the module declares no supported proxy-wasm ABI version (it exports neither proxy_abi_version_0_2_1 nor proxy_abi_version_0_2_0)");
        }
        for required in [
            "memory",
            "proxy_on_memory_allocate",
            "proxy_on_context_create",
        ] {
            if !exports.contains(&required) {
                bail!("the module does not export {required}, which every proxy-wasm module must");
            }
        }
        Ok(FilterModule {
            engine,
            module,
            linker,
        })
    }

    /// Instantiates the module and runs VM start and configure, as Envoy does
    /// when it loads a plugin.
    pub fn start(&self, plugin_configuration: &[u8]) -> Result<Vm, StartError> {
        self.start_in(&Environment::default(), plugin_configuration)
    }

    /// Starts a VM in `environment`: VMs started in the same one share
    /// their shared data and queues, clock and scripted network, as the
    /// worker threads of one Envoy do.
    pub fn start_in(
        &self,
        environment: &Environment,
        plugin_configuration: &[u8],
    ) -> Result<Vm, StartError> {
        self.start_with(environment, b"", plugin_configuration)
    }

    /// Starts a VM in `environment` with a VM configuration (what Envoy's
    /// `vm_config.configuration` holds, read in `proxy_on_vm_start`) and a
    /// plugin configuration (read in `proxy_on_configure`).
    pub fn start_with(
        &self,
        environment: &Environment,
        vm_configuration: &[u8],
        plugin_configuration: &[u8],
    ) -> Result<Vm, StartError> {
        let mut state = HostState::new(plugin_configuration.to_vec(), environment.clone());
        state.vm_configuration = vm_configuration.to_vec();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.data_mut().exchange.contexts = vec![ROOT];
        let fault = |callback: &str, message: String| GuestFault {
            callback: callback.to_string(),
            message,
            logs: Vec::new(),
        };
        let _ = store.set_fuel(CONFIGURE_FUEL);
        let instance = self
            .linker
            .instantiate(&mut store, &self.module)
            .map_err(|e| StartError::Fault(fault("instantiation", format!("{e:#}"))))?;
        let mut vm = Vm {
            store,
            instance,
            next_context: ROOT + 1,
            answered: 0,
            grpc_answered: 0,
            streams_answered: 0,
            stream: ROOT,
            since_tick: 0,
        };
        for init in ["_initialize", "_start"] {
            if vm.instance.get_func(&mut vm.store, init).is_some() {
                vm.call(init, &[], CONFIGURE_FUEL)
                    .map_err(StartError::Fault)?;
                break;
            }
        }
        vm.call("proxy_on_context_create", &[ROOT as i32, 0], CALLBACK_FUEL)
            .map_err(StartError::Fault)?;
        let vm_config_size = vm.store.data().vm_configuration.len() as i32;
        if let Some(0) = vm
            .call(
                "proxy_on_vm_start",
                &[ROOT as i32, vm_config_size],
                CONFIGURE_FUEL,
            )
            .map_err(StartError::Fault)?
        {
            return Err(StartError::Fault(GuestFault {
                callback: "proxy_on_vm_start".into(),
                message: "returned false: the VM refused to start".into(),
                logs: std::mem::take(&mut vm.store.data_mut().logs),
            }));
        }
        let size = plugin_configuration.len() as i32;
        let configured = vm
            .call("proxy_on_configure", &[ROOT as i32, size], CONFIGURE_FUEL)
            .map_err(StartError::Fault)?;
        if configured == Some(0) {
            let spent = Spent {
                fuel: CONFIGURE_FUEL.saturating_sub(vm.store.get_fuel().unwrap_or(0)),
                memory_bytes: vm
                    .instance
                    .get_memory(&mut vm.store, "memory")
                    .map_or(0, |m| m.data_size(&vm.store) as u64),
            };
            let state = vm.store.data_mut();
            return Err(StartError::Rejected {
                logs: std::mem::take(&mut state.logs),
                reports: std::mem::take(&mut state.reports),
                spent,
            });
        }
        Ok(vm)
    }
}

/// How Envoy 1.40's gRPC client ends a unary call that times out: the
/// status and the message the filter reads (Unavailable, from its router's
/// 504 local reply, not DeadlineExceeded).
pub const GRPC_TIMEOUT: (u32, &str) = (14, "upstream request timeout{response_timeout}");

/// A call waiting for its answer, and when it times out.
struct Timeout {
    context: u32,
    token: u32,
    /// A gRPC call (else an HTTP callout).
    grpc: bool,
    /// Clock nanoseconds.
    at: u64,
}

/// When a call dispatched at `at` (clock nanoseconds) with this timeout expires.
fn deadline(at: u64, timeout_ms: u32) -> u64 {
    at.saturating_add(u64::from(timeout_ms) * 1_000_000)
}

/// A running filter VM with its root context configured.
pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    next_context: u32,
    /// Callouts (in `HostState::http_calls` order) already looked at for a
    /// scripted reply: each is answered at most once.
    answered: usize,
    /// The same for gRPC calls and streams.
    grpc_answered: usize,
    streams_answered: usize,
    /// The context of the request in flight (the root's between requests).
    stream: u32,
    /// Virtual time since the last tick, in nanoseconds.
    since_tick: u64,
}

/// Where a request stands after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// The filter let it through: on to the next step, or the upstream.
    Continue,
    /// The filter paused it (waiting for a callout, or the whole body).
    Paused,
    /// The filter answered it with a local reply.
    Replied,
    /// The filter reset the stream (`proxy_close_stream`): the client gets
    /// no response, its connection is closed.
    Reset,
}

/// What shutting a VM down did.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// `proxy_on_delete` was called: the root context finished.
    pub deleted: bool,
    pub logs: Vec<LogLine>,
}

/// What one request did.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The request headers after the filter's request phase (what the router sees).
    pub upstream_headers: HeaderMap,
    /// The request body after the filter's changes (what the upstream gets).
    pub upstream_body: Vec<u8>,
    /// The local reply, if the filter sent one, as it asked for it.
    pub local_response: Option<LocalResponse>,
    /// The status the client receives, if any response was sent.
    pub response_code: Option<u16>,
    /// The response headers the client receives.
    pub response_headers: HeaderMap,
    /// The response body the client receives, after the filter's changes.
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderMap,
    /// HTTP callouts this request's context dispatched.
    pub http_calls: Vec<HttpCall>,
    /// gRPC calls this request's context dispatched.
    pub grpc_calls: Vec<GrpcCall>,
    /// gRPC streams this request's context opened.
    pub grpc_streams: Vec<GrpcStream>,
    /// The request phase ended paused without a reply (Envoy would wait).
    pub paused: bool,
    /// The filter reset the stream: no response reached the client.
    pub reset: bool,
    /// The cluster the request was routed to, when it left the proxy.
    pub upstream_cluster: Option<String>,
    pub route_cache_clears: u32,
    pub reports: Vec<serde_json::Value>,
    pub logs: Vec<LogLine>,
    /// Properties the filter set (its decision and usage records among them).
    pub properties: std::collections::HashMap<Vec<String>, Vec<u8>>,
}

impl Vm {
    /// Calls a guest export with i32 arguments; `None` for a missing optional
    /// callback (Envoy skips those) or one that returns nothing.
    fn call(&mut self, name: &str, args: &[i32], fuel: u64) -> Result<Option<i32>, GuestFault> {
        let fault = |message: String, store: &mut Store<HostState>| GuestFault {
            callback: name.to_string(),
            message,
            logs: std::mem::take(&mut store.data_mut().logs),
        };
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let ty = func.ty(&self.store);
        let params_ok =
            ty.params().len() == args.len() && ty.params().all(|p| matches!(p, ValType::I32));
        let results: Vec<ValType> = ty.results().collect();
        let results_ok = results.len() <= 1 && results.iter().all(|r| matches!(r, ValType::I32));
        if !params_ok || !results_ok {
            let wanted = format!("({}) -> i32", vec!["i32"; args.len()].join(", "));
            return Err(fault(
                format!("the export has type {ty:?}; the proxy-wasm ABI wants {wanted}"),
                &mut self.store,
            ));
        }
        if let Some(context) = args.first() {
            self.store.data_mut().current_context = *context as u32;
        }
        let _ = self.store.set_fuel(fuel);
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut out = vec![Val::I32(0); results.len()];
        match func.call(&mut self.store, &params, &mut out) {
            Ok(()) => Ok(out.first().and_then(Val::i32)),
            Err(error) => {
                let out_of_fuel = matches!(
                    error.downcast_ref::<wasmtime::Trap>(),
                    Some(wasmtime::Trap::OutOfFuel)
                );
                let message = if out_of_fuel {
                    format!("ran out of its budget of {fuel} fuel units (a runaway loop?)")
                } else if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
                    format!("trap: {trap}")
                } else {
                    // A host error (proc_exit), without the wasm backtrace.
                    error.root_cause().to_string()
                };
                Err(fault(message, &mut self.store))
            }
        }
    }

    /// Runs one request through the filter as Envoy would: request
    /// headers (then scripted callout replies), body, the upstream's answer
    /// (scripted per cluster, else `200 {}`) or the filter's local reply,
    /// and the end of the stream. The steps are the public ones below.
    pub fn request(&mut self, spec: &RequestSpec) -> Result<RequestRecord, GuestFault> {
        let body = self.begin(spec)?;
        self.request_headers(body.is_empty())?;
        self.deliver_callouts()?;
        if !body.is_empty() && matches!(self.flow(), Flow::Continue | Flow::Paused) {
            // Envoy goes on delivering the body to a filter that stopped
            // its headers (and buffers it); the filter may continue from there.
            self.request_body(&body, true)?;
            self.deliver_callouts()?;
        }
        if self.flow() == Flow::Continue {
            let upstreams = self.store.data().environment.upstreams.clone();
            let cluster = upstreams.cluster_of(&self.store.data().exchange.request_headers);
            let response = upstreams.response(cluster.as_deref());
            // A virtual clock moves on while the upstream answers; a real one cannot be moved.
            let _ = self
                .store
                .data()
                .environment
                .clock
                .advance(upstreams.latency(cluster.as_deref()));
            self.upstream_response(cluster, &response)?;
        }
        self.finish()
    }

    /// Starts a request: creates its context (`proxy_on_context_create`)
    /// with the request `spec` describes. Returns the body to deliver with
    /// [`Vm::request_body`] (the headers already carry its length). The
    /// steps after it: [`Vm::request_headers`], [`Vm::request_body`],
    /// [`Vm::request_trailers`], callouts answered ([`Vm::answer_http_call`],
    /// [`Vm::answer_grpc_call`]), then the upstream's answer
    /// ([`Vm::upstream_response`]) or the filter's local reply, and
    /// [`Vm::finish`].
    pub fn begin(&mut self, spec: &RequestSpec) -> Result<Vec<u8>, GuestFault> {
        let id = self.next_context;
        self.next_context += 1;
        let time = self.store.data().environment.clock.now_nanos();
        let mut exchange = Exchange::from_spec(spec, u64::from(id), time);
        exchange.contexts = vec![ROOT, id];
        let body = std::mem::take(&mut exchange.request_body);
        self.store.data_mut().exchange = exchange;
        self.stream = id;
        self.call(
            "proxy_on_context_create",
            &[id as i32, ROOT as i32],
            CALLBACK_FUEL,
        )?;
        Ok(body)
    }

    /// Where the request in flight stands.
    pub fn flow(&self) -> Flow {
        let exchange = &self.store.data().exchange;
        if exchange.closed {
            Flow::Reset
        } else if exchange.local_response.is_some() {
            Flow::Replied
        } else if exchange.request_paused {
            Flow::Paused
        } else {
            Flow::Continue
        }
    }

    /// A request-phase callback: the stream pauses when it answers Pause
    /// (1) and did not continue it itself.
    fn request_phase(&mut self, name: &str, args: &[i32]) -> Result<Flow, GuestFault> {
        self.store.data_mut().exchange.resumed = false;
        let action = self.call(name, args, CALLBACK_FUEL)?;
        let exchange = &mut self.store.data_mut().exchange;
        if action != Some(1) || exchange.resumed {
            exchange.continue_request();
        } else {
            exchange.request_paused = true;
        }
        Ok(self.flow())
    }

    /// After an answer delivered to `context`: the request goes on if the
    /// filter continued it from there.
    fn continue_if_resumed(&mut self, context: u32) {
        let stream = self.stream;
        let exchange = &mut self.store.data_mut().exchange;
        if exchange.resumed && context == stream {
            exchange.continue_request();
        }
    }

    /// Delivers the request headers (`proxy_on_request_headers`).
    pub fn request_headers(&mut self, end_of_stream: bool) -> Result<Flow, GuestFault> {
        let count = self.store.data().exchange.request_headers.len() as i32;
        let ctx = self.stream as i32;
        self.request_phase(
            "proxy_on_request_headers",
            &[ctx, count, i32::from(end_of_stream)],
        )
    }

    /// Delivers a chunk of the request body (`proxy_on_request_body`). As in
    /// Envoy, a filter that pauses has the body buffered: the next call sees
    /// what it held back and the new chunk together.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Flow, GuestFault> {
        let exchange = &mut self.store.data_mut().exchange;
        exchange.request_body.extend_from_slice(chunk);
        let size = exchange.request_body.len() as i32;
        let ctx = self.stream as i32;
        self.request_phase(
            "proxy_on_request_body",
            &[ctx, size, i32::from(end_of_stream)],
        )
    }

    /// Delivers request trailers (`proxy_on_request_trailers`), which end the request.
    pub fn request_trailers(&mut self, trailers: HeaderMap) -> Result<Flow, GuestFault> {
        let count = trailers.len() as i32;
        self.store.data_mut().exchange.request_trailers = trailers;
        let ctx = self.stream as i32;
        self.request_phase("proxy_on_request_trailers", &[ctx, count])
    }

    /// Every HTTP callout the filter dispatched in this VM, answered or not.
    pub fn http_calls(&self) -> &[HttpCall] {
        &self.store.data().http_calls
    }

    /// Every gRPC call the filter dispatched in this VM, answered or not.
    pub fn grpc_calls(&self) -> &[GrpcCall] {
        &self.store.data().grpc_calls
    }

    /// Answers the HTTP callout `token` (`proxy_on_http_call_response`, to
    /// the context that made it): `None` is a failed call (reset, timeout),
    /// which Envoy delivers with no headers and no body. `Ok(false)` when no
    /// callout with that token waits for an answer.
    pub fn answer_http_call(
        &mut self,
        token: u32,
        response: Option<&Response>,
    ) -> Result<bool, GuestFault> {
        let state = self.store.data_mut();
        let Some(call) = state
            .http_calls
            .iter_mut()
            .find(|c| c.token == token && !c.answered)
        else {
            return Ok(false);
        };
        call.answered = true;
        let context = call.context;
        if context != ROOT && !state.exchange.known_context(context) {
            // Its request has ended: Envoy cancelled the callout with it.
            return Ok(false);
        }
        let (headers, body, trailers) = match response {
            Some(r) => (r.header_map(), r.body.clone(), r.trailers.clone()),
            None => Default::default(),
        };
        let args = [
            context as i32,
            token as i32,
            headers.len() as i32,
            body.len() as i32,
            trailers.len() as i32,
        ];
        state.http_call_response = (headers, body, trailers);
        state.exchange.resumed = false;
        let result = self.call("proxy_on_http_call_response", &args, CALLBACK_FUEL);
        let state = self.store.data_mut();
        state.http_call_response = Default::default();
        self.continue_if_resumed(context);
        result.map(|_| true)
    }

    /// Answers the gRPC call `token`: a reply with status 0 is delivered as
    /// its message (`proxy_on_grpc_receive`), any other as the call's close
    /// with that status and message (`proxy_on_grpc_close`), as Envoy's
    /// unary gRPC client does. `Ok(false)` when no call with that token
    /// waits for an answer (never made, answered, or cancelled).
    pub fn answer_grpc_call(&mut self, token: u32, reply: &GrpcReply) -> Result<bool, GuestFault> {
        let message = envoy_grpc_message(&reply.error_message);
        self.close_grpc_call(token, reply, message)
    }

    /// Delivers a gRPC call's end: its message, or its close with `status_message`.
    fn close_grpc_call(
        &mut self,
        token: u32,
        reply: &GrpcReply,
        status_message: String,
    ) -> Result<bool, GuestFault> {
        let state = self.store.data_mut();
        let Some(call) = state
            .grpc_calls
            .iter_mut()
            .find(|c| c.token == token && c.state == CallState::Pending)
        else {
            return Ok(false);
        };
        call.state = CallState::Answered;
        let context = call.context;
        if context != ROOT && !state.exchange.known_context(context) {
            return Ok(false);
        }
        state.exchange.resumed = false;
        let result = if reply.status == 0 {
            state.grpc_receive = reply.message.clone();
            let size = reply.message.len() as i32;
            self.call(
                "proxy_on_grpc_receive",
                &[context as i32, token as i32, size],
                CALLBACK_FUEL,
            )
        } else {
            state.grpc_status = (reply.status, status_message.into_bytes());
            self.call(
                "proxy_on_grpc_close",
                &[context as i32, token as i32, reply.status as i32],
                CALLBACK_FUEL,
            )
        };
        let state = self.store.data_mut();
        state.grpc_receive.clear();
        state.grpc_status = (0, Vec::new());
        self.continue_if_resumed(context);
        result.map(|_| true)
    }

    /// Every gRPC stream the filter opened in this VM.
    pub fn grpc_streams(&self) -> &[GrpcStream] {
        &self.store.data().grpc_streams
    }

    /// The upstream answers the gRPC stream `token`, as Envoy delivers it:
    /// initial metadata (`proxy_on_grpc_receive_initial_metadata`), each
    /// message (`proxy_on_grpc_receive`), trailing metadata
    /// (`proxy_on_grpc_receive_trailing_metadata`), then the close with its
    /// status (`proxy_on_grpc_close`). A stream the filter cancels on the way
    /// gets nothing more. `Ok(false)` when no open stream has that token.
    pub fn answer_grpc_stream(
        &mut self,
        token: u32,
        reply: &GrpcStreamReply,
    ) -> Result<bool, GuestFault> {
        let open = |vm: &Vm| {
            vm.store
                .data()
                .grpc_streams
                .iter()
                .find(|s| s.token == token && s.state == CallState::Pending)
                .map(|s| s.context)
        };
        let Some(context) = open(self) else {
            return Ok(false);
        };
        if context != ROOT && !self.store.data().exchange.known_context(context) {
            return Ok(false);
        }
        let (ctx, tok) = (context as i32, token as i32);
        self.store.data_mut().exchange.resumed = false;
        let count = reply.initial_metadata.len() as i32;
        self.store.data_mut().grpc_initial_metadata = reply.initial_metadata.clone();
        self.call(
            "proxy_on_grpc_receive_initial_metadata",
            &[ctx, tok, count],
            CALLBACK_FUEL,
        )?;
        self.store.data_mut().grpc_initial_metadata.clear();
        for message in &reply.messages {
            if open(self).is_none() {
                break;
            }
            self.store.data_mut().grpc_receive = message.clone();
            let size = message.len() as i32;
            self.call("proxy_on_grpc_receive", &[ctx, tok, size], CALLBACK_FUEL)?;
            self.store.data_mut().grpc_receive.clear();
        }
        if open(self).is_some() {
            let count = reply.trailing_metadata.len() as i32;
            self.store.data_mut().grpc_trailing_metadata = reply.trailing_metadata.clone();
            self.call(
                "proxy_on_grpc_receive_trailing_metadata",
                &[ctx, tok, count],
                CALLBACK_FUEL,
            )?;
            self.store.data_mut().grpc_trailing_metadata.clear();
        }
        if open(self).is_some() {
            let state = self.store.data_mut();
            if let Some(stream) = state.grpc_streams.iter_mut().find(|s| s.token == token) {
                stream.state = CallState::Answered;
            }
            let message = envoy_grpc_message(&reply.error_message);
            state.grpc_status = (reply.status, message.into_bytes());
            let closed = self.call(
                "proxy_on_grpc_close",
                &[ctx, tok, reply.status as i32],
                CALLBACK_FUEL,
            );
            self.store.data_mut().grpc_status = (0, Vec::new());
            closed?;
        }
        self.continue_if_resumed(context);
        Ok(true)
    }

    /// Answers every callout dispatched so far for which the environment
    /// has a scripted reply (`proxy_on_http_call_response` or the gRPC
    /// callbacks, to the context that made the call), and tells this VM's
    /// root context of items enqueued to the shared queues it registered
    /// (`proxy_on_queue_ready`, once per item, as Envoy does). Callouts
    /// without a reply stay unanswered (they can still be answered by token).
    pub fn deliver_callouts(&mut self) -> Result<(), GuestFault> {
        loop {
            let state = self.store.data();
            let upstreams = state.environment.upstreams.clone();
            if let Some(call) = state.http_calls.get(self.answered).cloned() {
                self.answered += 1;
                if let Some(reply) = upstreams.next_callout_reply(&call.upstream) {
                    self.answer_http_call(call.token, Some(&reply))?;
                }
            } else if let Some(call) = state.grpc_calls.get(self.grpc_answered).cloned() {
                self.grpc_answered += 1;
                if let Some(reply) = upstreams.grpc_reply(&call.cluster) {
                    self.answer_grpc_call(call.token, &reply)?;
                }
            } else if let Some(stream) = state.grpc_streams.get(self.streams_answered).cloned() {
                self.streams_answered += 1;
                if let Some(reply) = upstreams.grpc_stream_reply(&stream.cluster) {
                    self.answer_grpc_stream(stream.token, &reply)?;
                }
            } else if let Some(queue) = self.next_queue_ready() {
                self.call(
                    "proxy_on_queue_ready",
                    &[ROOT as i32, queue as i32],
                    CALLBACK_FUEL,
                )?;
            } else {
                return Ok(());
            }
        }
    }

    /// The next queue this VM registered that something was enqueued to
    /// (by any VM of the environment) since it was last told.
    fn next_queue_ready(&self) -> Option<u32> {
        let serial = self.store.data().serial;
        let mut shared = self.store.data().environment.shared.lock();
        let at = shared
            .queue_ready
            .iter()
            .position(|(owner, _)| *owner == serial)?;
        Some(shared.queue_ready.remove(at).1)
    }

    /// The upstream's answer to the request: response headers, the body in
    /// its chunks (none for a HEAD request, as Envoy sends none), trailers.
    pub fn upstream_response(
        &mut self,
        cluster: Option<String>,
        response: &Response,
    ) -> Result<(), GuestFault> {
        let exchange = &mut self.store.data_mut().exchange;
        exchange.response_code = Some(response.status);
        exchange.upstream_cluster = cluster;
        let head = exchange.is_head();
        let chunks = if head { Vec::new() } else { response.chunks() };
        self.respond(response.header_map(), &chunks, response.trailers.clone())
    }

    /// Sends the filter's local reply as Envoy makes it (see
    /// [`LocalResponse::as_sent`]) through the response phase.
    fn respond_locally(&mut self) -> Result<(), GuestFault> {
        let exchange = &mut self.store.data_mut().exchange;
        let Some(reply) = exchange.local_response.clone() else {
            return Ok(());
        };
        let (headers, body) = reply.as_sent(&exchange.request_headers);
        exchange.response_code = headers
            .first()
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok());
        let chunks: Vec<&[u8]> = if body.is_empty() {
            Vec::new()
        } else {
            vec![&body]
        };
        self.respond(headers, &chunks, HeaderMap::new())
    }

    fn respond(
        &mut self,
        headers: HeaderMap,
        chunks: &[&[u8]],
        trailers: HeaderMap,
    ) -> Result<(), GuestFault> {
        let ctx = self.stream as i32;
        let count = headers.len() as i32;
        let state = self.store.data_mut();
        state.exchange.response_headers = headers;
        state.exchange.responded = true;
        let end = chunks.is_empty() && trailers.is_empty();
        self.call(
            "proxy_on_response_headers",
            &[ctx, count, i32::from(end)],
            CALLBACK_FUEL,
        )?;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len() && trailers.is_empty();
            let exchange = &mut self.store.data_mut().exchange;
            exchange.response_body.extend_from_slice(chunk);
            let size = exchange.response_body.len() as i32;
            let action = self.call(
                "proxy_on_response_body",
                &[ctx, size, i32::from(last)],
                CALLBACK_FUEL,
            )?;
            if action != Some(1) || last {
                // Passed on to the client (at the end, whatever was held back).
                let exchange = &mut self.store.data_mut().exchange;
                let passed = std::mem::take(&mut exchange.response_body);
                exchange.response_forwarded.extend_from_slice(&passed);
            }
        }
        if !trailers.is_empty() {
            let count = trailers.len() as i32;
            self.store.data_mut().exchange.response_trailers = trailers;
            self.call("proxy_on_response_trailers", &[ctx, count], CALLBACK_FUEL)?;
        }
        Ok(())
    }

    /// Ends the request: the local reply if the filter sent one and it was
    /// not delivered yet, then `proxy_on_log`, `proxy_on_done` and
    /// `proxy_on_delete`, and what the request did.
    pub fn finish(&mut self) -> Result<RequestRecord, GuestFault> {
        let ctx = self.stream as i32;
        if self.flow() == Flow::Replied && !self.store.data().exchange.responded {
            self.respond_locally()?;
        }
        let paused = self.flow() == Flow::Paused;
        let reset = self.flow() == Flow::Reset;
        self.call("proxy_on_log", &[ctx], CALLBACK_FUEL)?;
        self.call("proxy_on_done", &[ctx], CALLBACK_FUEL)?;
        self.call("proxy_on_delete", &[ctx], CALLBACK_FUEL)?;
        let state = self.store.data_mut();
        let mut exchange = std::mem::take(&mut state.exchange);
        let mut upstream_body = std::mem::take(&mut exchange.request_forwarded);
        upstream_body.extend_from_slice(&exchange.request_body);
        let mut response_body = std::mem::take(&mut exchange.response_forwarded);
        response_body.extend_from_slice(&exchange.response_body);
        let stream = self.stream;
        let record = RequestRecord {
            upstream_headers: exchange.request_headers,
            upstream_body,
            local_response: exchange.local_response,
            response_code: exchange.response_code,
            response_headers: exchange.response_headers,
            response_body,
            response_trailers: exchange.response_trailers,
            paused,
            reset,
            upstream_cluster: exchange.upstream_cluster,
            route_cache_clears: std::mem::take(&mut state.route_cache_clears),
            reports: std::mem::take(&mut state.reports),
            logs: std::mem::take(&mut state.logs),
            properties: exchange.set_properties,
            http_calls: state
                .http_calls
                .iter()
                .filter(|c| c.context == stream)
                .cloned()
                .collect(),
            grpc_calls: state
                .grpc_calls
                .iter()
                .filter(|c| c.context == stream)
                .cloned()
                .collect(),
            grpc_streams: state
                .grpc_streams
                .iter()
                .filter(|s| s.context == stream)
                .cloned()
                .collect(),
        };
        state.exchange.contexts = vec![ROOT];
        self.stream = ROOT;
        Ok(record)
    }

    /// Shuts the VM down as Envoy does when it drops a plugin: the root
    /// context's `proxy_on_done`; if it answers true, or later calls
    /// `proxy_done` (while scripted callouts are answered), `proxy_on_delete`.
    pub fn shutdown(&mut self) -> Result<Shutdown, GuestFault> {
        let done = self.call("proxy_on_done", &[ROOT as i32], CALLBACK_FUEL)?;
        let deleted = if done != Some(0) {
            true
        } else {
            self.store.data_mut().done_pending = true;
            self.deliver_callouts()?;
            !self.store.data().done_pending
        };
        if deleted {
            self.call("proxy_on_delete", &[ROOT as i32], CALLBACK_FUEL)?;
        }
        Ok(Shutdown {
            deleted,
            logs: self.take_logs(),
        })
    }

    /// Reports the filter made while starting (its policy description).
    pub fn take_reports(&mut self) -> Vec<serde_json::Value> {
        std::mem::take(&mut self.store.data_mut().reports)
    }

    pub fn take_logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.store.data_mut().logs)
    }

    /// Metrics the guest defined, with their values.
    pub fn metrics(&self) -> Vec<(String, i64)> {
        self.store
            .data()
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.value))
            .collect()
    }

    /// Fires the root context's timer once (`proxy_on_tick`), then answers
    /// the callouts it made that have a scripted reply.
    pub fn tick(&mut self) -> Result<(), GuestFault> {
        self.call("proxy_on_tick", &[ROOT as i32], CALLBACK_FUEL)?;
        self.deliver_callouts()
    }

    /// Moves the environment's virtual clock on by `by`, firing the root
    /// context's timer (`proxy_on_tick`, then scripted callout answers) each
    /// time a tick period the filter set elapses, as Envoy's timer would.
    /// Returns how many ticks fired.
    pub fn advance(&mut self, by: std::time::Duration) -> anyhow::Result<u32> {
        let clock = self.store.data().environment.clock.clone();
        let mut left = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let mut ticks = 0;
        loop {
            // The next event: a tick, or a callout's timeout.
            let period = u64::from(self.store.data().tick_period_ms) * 1_000_000;
            let tick_due = (period > 0).then(|| period.saturating_sub(self.since_tick));
            let now = clock.now_nanos();
            let timeout_due = self.next_timeout().map(|at| at.saturating_sub(now));
            let step = [tick_due, timeout_due, Some(left)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(left);
            clock.advance(std::time::Duration::from_nanos(step))?;
            left -= step;
            self.since_tick += step;
            self.expire_callouts()?;
            if period > 0 && self.since_tick >= period {
                self.since_tick = 0;
                self.tick()?;
                ticks += 1;
            }
            if left == 0 {
                return Ok(ticks);
            }
        }
    }

    /// Lets a virtual clock run while the request in flight is paused on
    /// an unanswered HTTP callout or gRPC call, up to its timeout (ticking
    /// on the way), as Envoy would wait. Returns how long it waited.
    pub fn wait_for_callouts(&mut self) -> anyhow::Result<std::time::Duration> {
        let mut waited = 0;
        while self.flow() == Flow::Paused {
            let stream = self.stream;
            let deadline = self
                .timeouts()
                .into_iter()
                .filter(|t| t.context == stream)
                .map(|t| t.at)
                .min();
            let Some(deadline) = deadline else {
                break;
            };
            let now = self.store.data().environment.clock.now_nanos();
            let by = deadline.saturating_sub(now);
            self.advance(std::time::Duration::from_nanos(by))?;
            waited += by;
        }
        Ok(std::time::Duration::from_nanos(waited))
    }

    /// The unanswered HTTP callouts and gRPC calls that have a timeout.
    fn timeouts(&self) -> Vec<Timeout> {
        let state = self.store.data();
        let http = state
            .http_calls
            .iter()
            .filter(|c| !c.answered && c.timeout_ms > 0)
            .map(|c| (c.context, c.token, false, c.dispatched_at, c.timeout_ms));
        let grpc = state
            .grpc_calls
            .iter()
            .filter(|c| c.state == CallState::Pending && c.timeout_ms > 0)
            .map(|c| (c.context, c.token, true, c.dispatched_at, c.timeout_ms));
        http.chain(grpc)
            .map(|(context, token, grpc, at, timeout_ms)| Timeout {
                context,
                token,
                grpc,
                at: deadline(at, timeout_ms),
            })
            .collect()
    }

    /// When the first unanswered HTTP callout or gRPC call times out
    /// (clock nanoseconds).
    fn next_timeout(&self) -> Option<u64> {
        self.timeouts().into_iter().map(|t| t.at).min()
    }

    /// Ends each call whose timeout has passed as Envoy's clients do: an
    /// HTTP callout gets their local reply, 504 `upstream request timeout`;
    /// a gRPC call is closed (see [`GRPC_TIMEOUT`]).
    fn expire_callouts(&mut self) -> Result<(), GuestFault> {
        let now = self.store.data().environment.clock.now_nanos();
        while let Some(expired) = self.timeouts().into_iter().find(|t| t.at <= now) {
            if expired.grpc {
                let (status, message) = GRPC_TIMEOUT;
                let reply = GrpcReply {
                    status,
                    ..GrpcReply::default()
                };
                self.close_grpc_call(expired.token, &reply, message.to_string())?;
            } else {
                let body = "upstream request timeout";
                let timeout = Response {
                    status: 504,
                    headers: vec![
                        ("content-length".into(), body.len().to_string().into_bytes()),
                        ("content-type".into(), b"text/plain".to_vec()),
                    ],
                    body: body.as_bytes().to_vec(),
                    ..Response::default()
                };
                self.answer_http_call(expired.token, Some(&timeout))?;
            }
        }
        Ok(())
    }

    /// The environment this VM runs in (shared store, clock, network).
    pub fn environment(&self) -> &Environment {
        &self.store.data().environment
    }

    /// Test access to the host state.
    pub fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }
}
