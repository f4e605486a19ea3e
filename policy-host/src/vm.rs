//! The filter's lifecycle, driven the way Envoy drives it: VM start,
//! configure, then per request context create, request headers and body,
//! response headers and body, log, done, delete.
//!
//! Each callback runs with a fuel budget, so a runaway guest ends that
//! callback with an error naming it instead of hanging the host.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Val, ValType};

use crate::abi::{self, HeaderMap, HostState, LocalResponse, LogLine};
use crate::compile_cache;
use crate::environment::Environment;
use crate::exchange::Exchange;
use crate::request::RequestSpec;

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
        let state = HostState::new(plugin_configuration.to_vec(), environment.clone());
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

/// A running filter VM with its root context configured.
pub struct Vm {
    store: Store<HostState>,
    instance: Instance,
    next_context: u32,
    /// Callouts (in `HostState::http_calls` order) already looked at for a
    /// scripted reply: each is answered at most once.
    answered: usize,
}

/// What one request did.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The request headers after the filter's request phase (what the router sees).
    pub upstream_headers: HeaderMap,
    /// The local reply, if the filter sent one.
    pub local_response: Option<LocalResponse>,
    /// The response headers the client receives.
    pub response_headers: HeaderMap,
    /// The request phase ended paused without a reply (Envoy would wait).
    pub paused: bool,
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
    /// and the end of the stream.
    pub fn request(&mut self, spec: &RequestSpec) -> Result<RequestRecord, GuestFault> {
        let id = self.next_context;
        self.next_context += 1;
        let time = self.store.data().environment.clock.now_nanos();
        let mut exchange = Exchange::from_spec(spec, u64::from(id), time);
        exchange.contexts = vec![ROOT, id];
        let has_body = !exchange.request_body.is_empty();
        let headers = exchange.request_headers.len() as i32;
        let body_len = exchange.request_body.len() as i32;
        self.store.data_mut().exchange = exchange;
        let ctx = id as i32;

        self.call(
            "proxy_on_context_create",
            &[ctx, ROOT as i32],
            CALLBACK_FUEL,
        )?;
        let action = self.call(
            "proxy_on_request_headers",
            &[ctx, headers, i32::from(!has_body)],
            CALLBACK_FUEL,
        )?;
        self.deliver_callouts()?;
        let mut paused = action == Some(1) && !self.store.data().exchange.resumed;
        let mut body_delivered = false;
        if paused && has_body && self.store.data().exchange.local_response.is_none() {
            // Envoy goes on delivering the body to a filter that stopped
            // its headers (and buffers it); the filter may continue from there.
            let action = self.call("proxy_on_request_body", &[ctx, body_len, 1], CALLBACK_FUEL)?;
            self.deliver_callouts()?;
            body_delivered = true;
            paused = action == Some(1) && !self.store.data().exchange.resumed;
        }
        let upstream_headers = self.store.data().exchange.request_headers.clone();
        let mut upstream_cluster = None;
        let local = self.store.data().exchange.local_response.clone();
        if let Some(reply) = &local {
            paused = false;
            let mut response: HeaderMap =
                vec![(":status".into(), reply.status.to_string().into_bytes())];
            response.extend(reply.headers.iter().cloned());
            self.store.data_mut().exchange.response_code = u16::try_from(reply.status).ok();
            self.respond(ctx, response, reply.body.clone())?;
        } else if !paused {
            if has_body && !body_delivered {
                self.call("proxy_on_request_body", &[ctx, body_len, 1], CALLBACK_FUEL)?;
            }
            let upstreams = self.store.data().environment.upstreams.clone();
            upstream_cluster = upstreams.cluster_of(&upstream_headers);
            let response = upstreams.response(upstream_cluster.as_deref());
            let latency = upstreams.latency(upstream_cluster.as_deref());
            // A virtual clock moves on while the upstream answers; a real one cannot be moved.
            let _ = self.store.data().environment.clock.advance(latency);
            let exchange = &mut self.store.data_mut().exchange;
            exchange.response_code = Some(response.status);
            exchange.upstream_cluster = upstream_cluster.clone();
            self.respond(ctx, response.header_map(), response.body)?;
        }
        self.call("proxy_on_log", &[ctx], CALLBACK_FUEL)?;
        self.call("proxy_on_done", &[ctx], CALLBACK_FUEL)?;
        self.call("proxy_on_delete", &[ctx], CALLBACK_FUEL)?;
        let state = self.store.data_mut();
        let exchange = std::mem::take(&mut state.exchange);
        let record = RequestRecord {
            upstream_headers,
            local_response: exchange.local_response,
            response_headers: exchange.response_headers,
            paused,
            upstream_cluster,
            route_cache_clears: std::mem::take(&mut state.route_cache_clears),
            reports: std::mem::take(&mut state.reports),
            logs: std::mem::take(&mut state.logs),
            properties: exchange.set_properties,
        };
        state.exchange.contexts = vec![ROOT];
        Ok(record)
    }

    /// Answers every callout dispatched so far for which the environment
    /// has a scripted reply (`proxy_on_http_call_response`, to the context
    /// that made the call). Callouts without one stay unanswered.
    pub fn deliver_callouts(&mut self) -> Result<(), GuestFault> {
        while let Some(call) = self.store.data().http_calls.get(self.answered).cloned() {
            self.answered += 1;
            let upstreams = self.store.data().environment.upstreams.clone();
            let Some(reply) = upstreams.next_callout_reply(&call.upstream) else {
                continue;
            };
            let headers = reply.header_map();
            let args = [
                call.context as i32,
                call.token as i32,
                headers.len() as i32,
                reply.body.len() as i32,
                0,
            ];
            self.store.data_mut().http_call_response = (headers, reply.body, Vec::new());
            self.call("proxy_on_http_call_response", &args, CALLBACK_FUEL)?;
            self.store.data_mut().http_call_response = Default::default();
        }
        Ok(())
    }

    fn respond(&mut self, ctx: i32, headers: HeaderMap, body: Vec<u8>) -> Result<(), GuestFault> {
        let count = headers.len() as i32;
        let len = body.len() as i32;
        let state = self.store.data_mut();
        state.exchange.response_headers = headers;
        state.exchange.response_body = body;
        self.call(
            "proxy_on_response_headers",
            &[ctx, count, i32::from(len == 0)],
            CALLBACK_FUEL,
        )?;
        if len > 0 {
            self.call("proxy_on_response_body", &[ctx, len, 1], CALLBACK_FUEL)?;
        }
        Ok(())
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

    /// The environment this VM runs in (shared store, clock, network).
    pub fn environment(&self) -> &Environment {
        &self.store.data().environment
    }

    /// Test access to the host state.
    pub fn state(&mut self) -> &mut HostState {
        self.store.data_mut()
    }
}
