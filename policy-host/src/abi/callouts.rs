//! Callouts: HTTP calls (answered by the environment's scripted replies) and
//! gRPC, which needs a gRPC service Envoy does not have here.

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
    Ok(())
}
