//! Callouts: HTTP calls and unary gRPC calls, to the clusters the
//! environment knows, answered by its scripted replies or by the caller
//! (`Vm::answer_http_call`, `Vm::answer_grpc_call`, `Vm::answer_grpc_stream`).

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
                // Envoy answers BadArgument for a cluster it does not have.
                if !c.data().environment.upstreams.knows(&upstream) {
                    return Err(Status::BadArgument.into());
                }
                // Envoy requires :method, :path and :authority on a callout.
                for required in [":method", ":path", ":authority"] {
                    if !headers.iter().any(|(k, _)| k == required) {
                        return Err(Status::BadArgument.into());
                    }
                }
                let state = c.data_mut();
                let token = state.take_token();
                state.http_calls.push(HttpCall {
                    token,
                    context: state.current_context,
                    upstream,
                    headers,
                    body,
                    timeout_ms: timeout_ms as u32,
                    dispatched_at: state.environment.clock.now_nanos(),
                    answered: false,
                });
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut c: Ctx<'_>,
         service_ptr: i32,
         service_len: i32,
         name_ptr: i32,
         name_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         message_ptr: i32,
         message_len: i32,
         timeout_ms: i32,
         token_ptr: i32| {
            finish((|| {
                let target = grpc_target(
                    &mut c,
                    [
                        service_ptr,
                        service_len,
                        name_ptr,
                        name_len,
                        method_ptr,
                        method_len,
                        metadata_ptr,
                        metadata_len,
                    ],
                )?;
                let message = read(&mut c, message_ptr, message_len)?;
                let state = c.data_mut();
                let token = state.take_token();
                state.grpc_calls.push(GrpcCall {
                    token,
                    context: state.current_context,
                    cluster: target.cluster,
                    service: target.service,
                    method: target.method,
                    metadata: target.metadata,
                    message,
                    timeout_ms: timeout_ms as u32,
                    dispatched_at: state.environment.clock.now_nanos(),
                    state: CallState::Pending,
                });
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Ctx<'_>,
         service_ptr: i32,
         service_len: i32,
         name_ptr: i32,
         name_len: i32,
         method_ptr: i32,
         method_len: i32,
         metadata_ptr: i32,
         metadata_len: i32,
         token_ptr: i32| {
            finish((|| {
                let target = grpc_target(
                    &mut c,
                    [
                        service_ptr,
                        service_len,
                        name_ptr,
                        name_len,
                        method_ptr,
                        method_len,
                        metadata_ptr,
                        metadata_len,
                    ],
                )?;
                let state = c.data_mut();
                let token = state.take_token();
                state.grpc_streams.push(GrpcStream {
                    token,
                    context: state.current_context,
                    cluster: target.cluster,
                    service: target.service,
                    method: target.method,
                    metadata: target.metadata,
                    sent: Vec::new(),
                    local_closed: false,
                    state: CallState::Pending,
                });
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut c: Ctx<'_>, token: i32, ptr: i32, len: i32, end_stream: i32| {
            finish((|| {
                let message = read(&mut c, ptr, len)?;
                let stream = c
                    .data_mut()
                    .grpc_streams
                    .iter_mut()
                    .find(|s| s.token == token as u32 && s.state == CallState::Pending)
                    .ok_or(Status::NotFound)?;
                stream.sent.push(message);
                stream.local_closed |= end_stream != 0;
                Ok(())
            })())
        },
    )?;
    // Cancelling: a pending call or stream gets no more callbacks.
    // Closing: a stream's side ends (its answer still comes); a call is cancelled.
    for close in [false, true] {
        let name = if close {
            "proxy_grpc_close"
        } else {
            "proxy_grpc_cancel"
        };
        l.func_wrap("env", name, move |mut c: Ctx<'_>, token: i32| {
            let token = token as u32;
            let state = c.data_mut();
            if let Some(call) = state
                .grpc_calls
                .iter_mut()
                .find(|call| call.token == token && call.state == CallState::Pending)
            {
                call.state = CallState::Cancelled;
                return Ok(Status::Ok as i32);
            }
            match state
                .grpc_streams
                .iter_mut()
                .find(|s| s.token == token && s.state == CallState::Pending)
            {
                Some(stream) if close => stream.local_closed = true,
                Some(stream) => stream.state = CallState::Cancelled,
                None => return Ok(Status::NotFound as i32),
            }
            Ok(Status::Ok as i32)
        })?;
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
    Ok(())
}

/// Where a gRPC call or stream goes, as the guest names it.
struct GrpcTarget {
    cluster: String,
    service: String,
    method: String,
    metadata: HeaderMap,
}

/// Reads a gRPC call's or stream's target: (pointer, length) of the
/// service, service name, method and initial metadata. Envoy reads the
/// service as a cluster name when it is not a serialized GrpcService; a
/// cluster it does not have is ParseFailure.
fn grpc_target(c: &mut Ctx<'_>, args: [i32; 8]) -> HostResult<GrpcTarget> {
    let [service_ptr, service_len, name_ptr, name_len, method_ptr, method_len, metadata_ptr, metadata_len] =
        args;
    let cluster = read_string(c, service_ptr, service_len)?;
    let service = read_string(c, name_ptr, name_len)?;
    let method = read_string(c, method_ptr, method_len)?;
    let metadata = deserialize_map(&read(c, metadata_ptr, metadata_len)?)
        .ok_or(Status::SerializationFailure)?;
    if !c.data().environment.upstreams.knows(&cluster) {
        return Err(Status::ParseFailure.into());
    }
    Ok(GrpcTarget {
        cluster,
        service,
        method,
        metadata,
    })
}
