//! The host side of the proxy-wasm ABI 0.2.1, and the WASI preview1 calls a
//! Rust `wasm32-wasip1` module imports, with the semantics Envoy gives them.
//!
//! Every guest pointer is bounds-checked: a bad one is answered with
//! `InvalidMemoryAccess`, as Envoy answers it, never with a host panic.

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Extern, Linker, Memory};

use crate::request::Exchange;

/// proxy-wasm status codes (`WasmResult` in Envoy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
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
    fn from_abi(value: i32) -> Option<MapType> {
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

/// A header map: lower-case names, values as bytes, order kept, names may repeat.
pub type HeaderMap = Vec<(String, Vec<u8>)>;

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

/// A local reply the guest sent (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// An HTTP call the guest dispatched; answered by the test script, or never.
#[derive(Debug, Clone)]
pub struct HttpCall {
    pub token: u32,
    pub upstream: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    /// 0 counter, 1 gauge, 2 histogram.
    pub kind: u32,
    pub value: i64,
}

/// Everything the host knows about the VM and the request in flight.
pub struct HostState {
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
    pub shared_data: HashMap<String, (Vec<u8>, u32)>,
    pub queues: Vec<(String, String, VecDeque<Vec<u8>>)>,
    pub http_calls: Vec<HttpCall>,
    pub tick_period_ms: u32,
    pub effective_context: u32,
    pub next_token: u32,
    /// The request in flight, if any.
    pub exchange: Exchange,
    /// The body of the `proxy_on_http_call_response` being delivered.
    pub http_call_response: (HeaderMap, Vec<u8>, HeaderMap),
    /// `proxy_get_status` answer for the gRPC callbacks (none are made here).
    pub grpc_status: (u32, Vec<u8>),
    pub limits: wasmtime::StoreLimits,
    random_state: u64,
}

impl HostState {
    pub fn new(plugin_configuration: Vec<u8>) -> HostState {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        HostState {
            plugin_configuration,
            vm_configuration: Vec::new(),
            logs: Vec::new(),
            log_level: 0,
            reports: Vec::new(),
            route_cache_clears: 0,
            metrics: Vec::new(),
            shared_data: HashMap::new(),
            queues: Vec::new(),
            http_calls: Vec::new(),
            tick_period_ms: 0,
            effective_context: 0,
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

    fn map(&mut self, map: MapType) -> Option<&mut HeaderMap> {
        Some(match map {
            MapType::RequestHeaders => &mut self.exchange.request_headers,
            MapType::RequestTrailers => &mut self.exchange.request_trailers,
            MapType::ResponseHeaders => &mut self.exchange.response_headers,
            MapType::ResponseTrailers => &mut self.exchange.response_trailers,
            MapType::HttpCallResponseHeaders => &mut self.http_call_response.0,
            MapType::HttpCallResponseTrailers => &mut self.http_call_response.2,
            MapType::GrpcInitialMetadata | MapType::GrpcTrailingMetadata => return None,
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: test randomness, not cryptography.
        let mut x = self.random_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.random_state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Why a host call did not complete: a status for the guest, or a trap
/// (the guest's allocator failed) that ends the callback.
enum Failure {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure::Status(status)
    }
}

type HostResult<T = ()> = Result<T, Failure>;

fn finish(result: HostResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok as i32),
        Err(Failure::Status(status)) => Ok(status as i32),
        Err(Failure::Trap(error)) => Err(error),
    }
}

type Ctx<'a> = Caller<'a, HostState>;

fn memory(caller: &mut Ctx<'_>) -> HostResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(Status::InvalidMemoryAccess.into()),
    }
}

/// wasm32 pointers and sizes are unsigned 32-bit values carried in i32s.
fn range(ptr: i32, len: i32) -> HostResult<(usize, usize)> {
    Ok((ptr as u32 as usize, len as u32 as usize))
}

fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let memory = memory(caller)?;
    let (start, len) = range(ptr, len)?;
    let data = memory.data(&*caller);
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess.into())
}

fn read_string(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> HostResult<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument.into())
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> HostResult {
    let memory = memory(caller)?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    memory
        .data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands bytes to the guest: memory from its `proxy_on_memory_allocate`, then
/// the pointer and size written where it asked.
fn give(caller: &mut Ctx<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> HostResult {
    let size = u32::try_from(bytes.len()).map_err(|_| Status::BadArgument)?;
    let ptr = if bytes.is_empty() {
        0
    } else {
        let allocate = caller
            .get_export("proxy_on_memory_allocate")
            .and_then(Extern::into_func)
            .ok_or(Status::InvalidMemoryAccess)?
            .typed::<i32, i32>(&*caller)
            .map_err(|_| Status::InvalidMemoryAccess)?;
        let ptr = allocate
            .call(&mut *caller, size as i32)
            .map_err(Failure::Trap)?;
        if ptr == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
        write(caller, ptr, bytes)?;
        ptr
    };
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, size)
}

/// The ABI's serialized map: count, (key size, value size) pairs, then each
/// key and value followed by a NUL.
pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses a serialized map; `None` when it is malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderMap> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut map = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?;
        at = at.checked_add(k)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at = at.checked_add(v)?.checked_add(1)?;
        map.push((String::from_utf8(key.to_vec()).ok()?, value.to_vec()));
    }
    Some(map)
}

/// A property path as the ABI passes it: segments separated by NUL bytes.
fn property_path(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// A shared queue by the id the guest holds (ids start at 1).
fn queue(state: &mut HostState, id: i32) -> HostResult<&mut VecDeque<Vec<u8>>> {
    let index = (id as u32 as usize)
        .checked_sub(1)
        .ok_or(Status::NotFound)?;
    Ok(&mut state.queues.get_mut(index).ok_or(Status::NotFound)?.2)
}

/// The map and the header name of a header-map call; Envoy lower-cases names.
fn map_and_key(
    c: &mut Ctx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
) -> HostResult<(MapType, String)> {
    let map = map_type(map)?;
    Ok((map, read_string(c, key_ptr, key_len)?.to_ascii_lowercase()))
}

fn map_type(value: i32) -> HostResult<MapType> {
    MapType::from_abi(value).ok_or(Failure::Status(Status::BadArgument))
}

/// Adds every proxy-wasm and WASI import this host provides to `linker`.
pub fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    link_proxy(linker)?;
    link_wasi(linker)?;
    Ok(())
}

fn link_proxy(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| {
            finish((|| {
                let message = String::from_utf8_lossy(&read(&mut c, ptr, len)?).into_owned();
                let level = u32::try_from(level).map_err(|_| Status::BadArgument)?;
                c.data_mut().logs.push(LogLine { level, message });
                Ok(())
            })())
        },
    )?;
    l.func_wrap("env", "proxy_get_log_level", |mut c: Ctx<'_>, ptr: i32| {
        let level = c.data().log_level;
        finish(write_u32(&mut c, ptr, level))
    })?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ptr: i32| {
            let now = c.data().exchange.time_nanos;
            finish(write(&mut c, ptr, &now.to_le_bytes()))
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: i32| {
            c.data_mut().tick_period_ms = period as u32;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let state = c.data();
                let buffer: &[u8] = match kind {
                    0 => &state.exchange.request_body,
                    1 => &state.exchange.response_body,
                    4 => &state.http_call_response.1,
                    6 => &state.vm_configuration,
                    7 => &state.plugin_configuration,
                    2 | 3 | 5 | 8 => return Err(Status::NotFound.into()),
                    _ => return Err(Status::BadArgument.into()),
                };
                let (start, max) = range(start, max)?;
                if start > buffer.len() {
                    return Err(Status::BadArgument.into());
                }
                let end = start.saturating_add(max).min(buffer.len());
                let bytes = buffer[start..end].to_vec();
                give(&mut c, &bytes, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            finish((|| {
                let data = read(&mut c, ptr, len)?;
                let (start, size) = range(start, size)?;
                let state = c.data_mut();
                let buffer = match kind {
                    0 => &mut state.exchange.request_body,
                    1 => &mut state.exchange.response_body,
                    2..=8 => return Err(Status::NotFound.into()),
                    _ => return Err(Status::BadArgument.into()),
                };
                // Envoy: (0, 0) prepends; (0, len) replaces all; (len, _) appends.
                if start == 0 && size == 0 {
                    buffer.splice(0..0, data);
                } else if start == 0 && size >= buffer.len() {
                    *buffer = data;
                } else if start >= buffer.len() {
                    buffer.extend_from_slice(&data);
                } else {
                    return Err(Status::BadArgument.into());
                }
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let map = map_type(map)?;
                let bytes = match c.data_mut().map(map) {
                    Some(m) => serialize_map(m),
                    None => return Err(Status::NotFound.into()),
                };
                give(&mut c, &bytes, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr: i32, len: i32| {
            finish((|| {
                let map = map_type(map)?;
                let pairs = deserialize_map(&read(&mut c, ptr, len)?)
                    .ok_or(Status::SerializationFailure)?;
                let target = c.data_mut().map(map).ok_or(Status::NotFound)?;
                *target = pairs
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let (map, key) = map_and_key(&mut c, map, key_ptr, key_len)?;
                // Envoy answers with the first value of a repeated header.
                let value = c
                    .data_mut()
                    .map(map)
                    .ok_or(Status::NotFound)?
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .ok_or(Status::NotFound)?;
                give(&mut c, &value, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32, ptr: i32, len: i32| {
            finish((|| {
                let (map, key) = map_and_key(&mut c, map, key_ptr, key_len)?;
                let value = read(&mut c, ptr, len)?;
                let target = c.data_mut().map(map).ok_or(Status::NotFound)?;
                match target.iter().position(|(k, _)| *k == key) {
                    Some(first) => {
                        target[first].1 = value;
                        let mut i = 0;
                        target.retain(|(k, _)| {
                            i += 1;
                            i - 1 == first || *k != key
                        });
                    }
                    None => target.push((key, value)),
                }
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32| {
            finish((|| {
                let (map, key) = map_and_key(&mut c, map, key_ptr, key_len)?;
                let target = c.data_mut().map(map).ok_or(Status::NotFound)?;
                target.retain(|(k, _)| *k != key);
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32, ptr: i32, len: i32| {
            finish((|| {
                let (map, key) = map_and_key(&mut c, map, key_ptr, key_len)?;
                let value = read(&mut c, ptr, len)?;
                c.data_mut()
                    .map(map)
                    .ok_or(Status::NotFound)?
                    .push((key, value));
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, path_ptr: i32, path_len: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let path = property_path(&read(&mut c, path_ptr, path_len)?);
                let value = c.data().exchange.property(&path).ok_or(Status::NotFound)?;
                give(&mut c, &value, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Ctx<'_>, path_ptr: i32, path_len: i32, ptr: i32, len: i32| {
            finish((|| {
                let path = property_path(&read(&mut c, path_ptr, path_len)?);
                let value = read(&mut c, ptr, len)?;
                c.data_mut().exchange.set_property(path, value);
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| {
            finish((|| {
                let key = read_string(&mut c, key_ptr, key_len)?;
                let (value, cas) = c
                    .data()
                    .shared_data
                    .get(&key)
                    .cloned()
                    .ok_or(Status::NotFound)?;
                give(&mut c, &value, ptr_ptr, size_ptr)?;
                write_u32(&mut c, cas_ptr, cas)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, ptr: i32, len: i32, cas: i32| {
            finish((|| {
                let key = read_string(&mut c, key_ptr, key_len)?;
                let value = read(&mut c, ptr, len)?;
                let entry = c
                    .data_mut()
                    .shared_data
                    .entry(key)
                    .or_insert((Vec::new(), 0));
                if cas != 0 && cas as u32 != entry.1 {
                    return Err(Status::CasMismatch.into());
                }
                *entry = (value, entry.1.wrapping_add(1).max(1));
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Ctx<'_>, name_ptr: i32, name_len: i32, id_ptr: i32| {
            finish((|| {
                let name = read_string(&mut c, name_ptr, name_len)?;
                let queues = &mut c.data_mut().queues;
                let id = match queues
                    .iter()
                    .position(|(vm, n, _)| vm.is_empty() && *n == name)
                {
                    Some(i) => i,
                    None => {
                        queues.push((String::new(), name, VecDeque::new()));
                        queues.len() - 1
                    }
                };
                write_u32(&mut c, id_ptr, id as u32 + 1)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>, vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, id_ptr: i32| {
            finish((|| {
                let _vm = read_string(&mut c, vm_ptr, vm_len)?;
                let name = read_string(&mut c, name_ptr, name_len)?;
                let id = c
                    .data()
                    .queues
                    .iter()
                    .position(|(_, n, _)| *n == name)
                    .ok_or(Status::NotFound)?;
                write_u32(&mut c, id_ptr, id as u32 + 1)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let item = queue(c.data_mut(), id)?.pop_front().ok_or(Status::Empty)?;
                give(&mut c, &item, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ptr: i32, len: i32| {
            finish((|| {
                let value = read(&mut c, ptr, len)?;
                queue(c.data_mut(), id)?.push_back(value);
                Ok(())
            })())
        },
    )?;
    for name in ["proxy_continue_stream", "proxy_close_stream"] {
        let close = name == "proxy_close_stream";
        l.func_wrap("env", name, move |mut c: Ctx<'_>, stream: i32| {
            if !(0..=2).contains(&stream) {
                return Ok(Status::BadArgument as i32);
            }
            if close {
                c.data_mut().exchange.closed = true;
            } else {
                c.data_mut().exchange.resumed = true;
            }
            Ok(Status::Ok as i32)
        })?;
    }
    // ABI 0.1.0 spellings that Envoy still provides.
    for name in ["proxy_continue_request", "proxy_continue_response"] {
        l.func_wrap("env", name, |mut c: Ctx<'_>| {
            c.data_mut().exchange.resumed = true;
            Ok(Status::Ok as i32)
        })?;
    }
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc_status: i32| {
            finish((|| {
                let details =
                    String::from_utf8_lossy(&read(&mut c, details_ptr, details_len)?).into_owned();
                let body = read(&mut c, body_ptr, body_len)?;
                let headers = deserialize_map(&read(&mut c, headers_ptr, headers_len)?)
                    .ok_or(Status::SerializationFailure)?;
                if !(200..=599).contains(&status) {
                    return Err(Status::BadArgument.into());
                }
                c.data_mut().exchange.local_response = Some(LocalResponse {
                    status: status as u32,
                    details,
                    headers,
                    body,
                });
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         trailers_ptr: i32,
         trailers_len: i32,
         timeout_ms: i32,
         token_ptr: i32| {
            finish((|| {
                let upstream = read_string(&mut c, upstream_ptr, upstream_len)?;
                let headers = deserialize_map(&read(&mut c, headers_ptr, headers_len)?)
                    .ok_or(Status::SerializationFailure)?;
                let body = read(&mut c, body_ptr, body_len)?;
                deserialize_map(&read(&mut c, trailers_ptr, trailers_len)?)
                    .ok_or(Status::SerializationFailure)?;
                // Envoy requires :method, :path and :authority on a callout.
                for required in [":method", ":path", ":authority"] {
                    if !headers.iter().any(|(k, _)| k == required) {
                        return Err(Status::BadArgument.into());
                    }
                }
                let state = c.data_mut();
                let token = state.next_token;
                state.next_token += 1;
                state.http_calls.push(HttpCall {
                    token,
                    upstream,
                    headers,
                    body,
                    timeout_ms: timeout_ms as u32,
                });
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    // gRPC needs a gRPC service configured in Envoy; none is, so Envoy would
    // answer these with an error status, as this host does.
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |_: Ctx<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| Ok(Status::BadArgument as i32),
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_: Ctx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            Ok(Status::BadArgument as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| Ok(Status::NotFound as i32),
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        l.func_wrap(
            "env",
            name,
            |_: Ctx<'_>, _: i32| Ok(Status::NotFound as i32),
        )?;
    }
    l.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Ctx<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let (code, message) = c.data().grpc_status.clone();
                write_u32(&mut c, code_ptr, code)?;
                give(&mut c, &message, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Ctx<'_>, context: i32| {
            let known = c.data().exchange.known_context(context as u32);
            if !known {
                return Ok(Status::BadArgument as i32);
            }
            c.data_mut().effective_context = context as u32;
            Ok(Status::Ok as i32)
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_done",
        |_: Ctx<'_>| Ok(Status::NotFound as i32),
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Ctx<'_>,
         name_ptr: i32,
         name_len: i32,
         args_ptr: i32,
         args_len: i32,
         ptr_ptr: i32,
         size_ptr: i32| {
            finish((|| {
                let name = read_string(&mut c, name_ptr, name_len)?;
                let args = read(&mut c, args_ptr, args_len)?;
                match name.as_str() {
                    "clear_route_cache" => c.data_mut().route_cache_clears += 1,
                    "celroute_report" => {
                        let report = serde_json::from_slice(&args)
                            .map_err(|_| Status::SerializationFailure)?;
                        c.data_mut().reports.push(report);
                    }
                    _ => return Err(Status::NotFound.into()),
                }
                // Neither function returns data.
                write_u32(&mut c, ptr_ptr, 0)?;
                write_u32(&mut c, size_ptr, 0)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: i32, name_ptr: i32, name_len: i32, id_ptr: i32| {
            finish((|| {
                if !(0..=2).contains(&kind) {
                    return Err(Status::BadArgument.into());
                }
                let name = read_string(&mut c, name_ptr, name_len)?;
                let metrics = &mut c.data_mut().metrics;
                let id = match metrics
                    .iter()
                    .position(|m| m.name == name && m.kind == kind as u32)
                {
                    Some(i) => i,
                    None => {
                        metrics.push(Metric {
                            name,
                            kind: kind as u32,
                            value: 0,
                        });
                        metrics.len() - 1
                    }
                };
                write_u32(&mut c, id_ptr, id as u32)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Ctx<'_>, id: i32, offset: i64| {
            let metric = c.data_mut().metrics.get_mut(id as u32 as usize);
            Ok(match metric {
                Some(m) if m.kind == 2 => Status::BadArgument as i32,
                Some(m) => {
                    m.value = m.value.saturating_add(offset);
                    Status::Ok as i32
                }
                None => Status::NotFound as i32,
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Ctx<'_>, id: i32, value: i64| {
            let metric = c.data_mut().metrics.get_mut(id as u32 as usize);
            Ok(match metric {
                Some(m) => {
                    m.value = value;
                    Status::Ok as i32
                }
                None => Status::NotFound as i32,
            })
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, ptr: i32| {
            finish((|| {
                let value = c
                    .data()
                    .metrics
                    .get(id as u32 as usize)
                    .map(|m| m.value)
                    .ok_or(Status::NotFound)?;
                write(&mut c, ptr, &value.to_le_bytes())
            })())
        },
    )?;
    Ok(())
}

/// WASI errno values used below.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSYS: i32 = 52;

fn errno(result: HostResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(ERRNO_SUCCESS),
        Err(Failure::Status(Status::BadArgument)) => Ok(ERRNO_INVAL),
        Err(Failure::Status(_)) => Ok(ERRNO_FAULT),
        Err(Failure::Trap(e)) => Err(e),
    }
}

fn link_wasi(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    const W: &str = "wasi_snapshot_preview1";
    // No arguments and no environment, as in Envoy.
    for name in ["args_sizes_get", "environ_sizes_get"] {
        l.func_wrap(W, name, |mut c: Ctx<'_>, count_ptr: i32, size_ptr: i32| {
            errno(write_u32(&mut c, count_ptr, 0).and_then(|()| write_u32(&mut c, size_ptr, 0)))
        })?;
    }
    for name in ["args_get", "environ_get"] {
        l.func_wrap(W, name, |_: Ctx<'_>, _: i32, _: i32| Ok(ERRNO_SUCCESS))?;
    }
    l.func_wrap(
        W,
        "clock_time_get",
        |mut c: Ctx<'_>, clock: i32, _precision: i64, ptr: i32| {
            if !(0..=3).contains(&clock) {
                return Ok(ERRNO_INVAL);
            }
            let now = c.data().exchange.time_nanos;
            errno(write(&mut c, ptr, &now.to_le_bytes()))
        },
    )?;
    l.func_wrap(
        W,
        "clock_res_get",
        |mut c: Ctx<'_>, _clock: i32, ptr: i32| errno(write(&mut c, ptr, &1u64.to_le_bytes())),
    )?;
    l.func_wrap(W, "random_get", |mut c: Ctx<'_>, ptr: i32, len: i32| {
        errno((|| {
            let (_, len) = range(ptr, len)?;
            let mut bytes = Vec::with_capacity(len);
            while bytes.len() < len {
                bytes.extend_from_slice(&c.data_mut().next_random().to_le_bytes());
            }
            bytes.truncate(len);
            write(&mut c, ptr, &bytes)
        })())
    })?;
    l.func_wrap(
        W,
        "fd_write",
        |mut c: Ctx<'_>, fd: i32, iovs: i32, iovs_len: i32, written_ptr: i32| {
            if fd != 1 && fd != 2 {
                return Ok(ERRNO_BADF);
            }
            errno((|| {
                let mut text = Vec::new();
                for i in 0..iovs_len.max(0) {
                    let iov = read(&mut c, iovs.wrapping_add(i * 8), 8)?;
                    let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                    let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                    text.extend_from_slice(&read(&mut c, ptr, len)?);
                }
                let written = text.len() as u32;
                // Envoy logs stdout at info and stderr at error.
                let level = if fd == 1 { 2 } else { 4 };
                let message = String::from_utf8_lossy(&text).trim_end().to_string();
                if !message.is_empty() {
                    c.data_mut().logs.push(LogLine { level, message });
                }
                write_u32(&mut c, written_ptr, written)
            })())
        },
    )?;
    l.func_wrap(
        W,
        "fd_read",
        |_: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| Ok(ERRNO_NOSYS),
    )?;
    l.func_wrap(W, "fd_close", |_: Ctx<'_>, _: i32| Ok(ERRNO_NOSYS))?;
    l.func_wrap(
        W,
        "fd_seek",
        |_: Ctx<'_>, _: i32, _: i64, _: i32, _: i32| Ok(ERRNO_NOSYS),
    )?;
    l.func_wrap(W, "fd_fdstat_get", |mut c: Ctx<'_>, fd: i32, ptr: i32| {
        if fd != 1 && fd != 2 {
            return Ok(ERRNO_BADF);
        }
        // filetype character device (2), no flags, write rights.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8] = 64;
        errno(write(&mut c, ptr, &stat))
    })?;
    l.func_wrap(W, "fd_prestat_get", |_: Ctx<'_>, _: i32, _: i32| {
        Ok(ERRNO_BADF)
    })?;
    l.func_wrap(
        W,
        "fd_prestat_dir_name",
        |_: Ctx<'_>, _: i32, _: i32, _: i32| Ok(ERRNO_NOSYS),
    )?;
    l.func_wrap(W, "sched_yield", |_: Ctx<'_>| Ok(ERRNO_SUCCESS))?;
    l.func_wrap(
        W,
        "poll_oneoff",
        |_: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| Ok(ERRNO_NOSYS),
    )?;
    l.func_wrap(
        W,
        "proc_exit",
        |_: Ctx<'_>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::msg(format!(
                "the module called proc_exit({code})"
            )))
        },
    )?;
    Ok(())
}
