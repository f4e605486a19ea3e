//! Callouts: HTTP calls and unary gRPC calls, to the clusters the
//! environment knows, answered by its scripted replies or by the caller
//! (`Vm::answer_http_call`, `Vm::answer_grpc_call`). gRPC streams are not run.

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
                let token = state.next_token;
                state.next_token += 1;
                let context = state.current_context;
                state.http_calls.push(HttpCall {
                    token,
                    context,
                    upstream,
                    headers,
                    body,
                    timeout_ms: timeout_ms as u32,
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
                // Envoy reads the service as a cluster name when it is not a
                // serialized GrpcService; an unknown cluster is ParseFailure.
                let cluster = read_string(&mut c, service_ptr, service_len)?;
                let service = read_string(&mut c, name_ptr, name_len)?;
                let method = read_string(&mut c, method_ptr, method_len)?;
                let metadata = deserialize_map(&read(&mut c, metadata_ptr, metadata_len)?)
                    .ok_or(Status::SerializationFailure)?;
                let message = read(&mut c, message_ptr, message_len)?;
                if !c.data().environment.upstreams.knows(&cluster) {
                    return Err(Status::ParseFailure.into());
                }
                let state = c.data_mut();
                let token = state.next_token;
                state.next_token += 1;
                let context = state.current_context;
                state.grpc_calls.push(GrpcCall {
                    token,
                    context,
                    cluster,
                    service,
                    method,
                    metadata,
                    message,
                    timeout_ms: timeout_ms as u32,
                    state: CallState::Pending,
                });
                write_u32(&mut c, token_ptr, token)
            })())
        },
    )?;
    // gRPC streams are not run here: opening one to a known cluster is
    // answered InternalFailure (with a warning in the log), not as Envoy,
    // which opens it.
    l.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut c: Ctx<'_>,
         service_ptr: i32,
         service_len: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32| {
            finish((|| {
                let cluster = read_string(&mut c, service_ptr, service_len)?;
                if !c.data().environment.upstreams.knows(&cluster) {
                    return Err(Status::ParseFailure.into());
                }
                c.data_mut().logs.push(LogLine {
                    level: 3,
                    message: format!(
                        "policy-host: gRPC streams are not supported (stream to '{cluster}' refused with InternalFailure)"
                    ),
                });
                Err(Status::InternalFailure.into())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| Ok(Status::NotFound as i32),
    )?;
    // Cancelling a pending unary call: no answer is delivered for it.
    l.func_wrap("env", "proxy_grpc_cancel", |mut c: Ctx<'_>, token: i32| {
        let call = c
            .data_mut()
            .grpc_calls
            .iter_mut()
            .find(|call| call.token == token as u32 && call.state == CallState::Pending);
        Ok(match call {
            Some(call) => {
                call.state = CallState::Cancelled;
                Status::Ok as i32
            }
            None => Status::NotFound as i32,
        })
    })?;
    // Closing is for streams, of which there are none.
    l.func_wrap("env", "proxy_grpc_close", |_: Ctx<'_>, _: i32| {
        Ok(Status::NotFound as i32)
    })?;
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
