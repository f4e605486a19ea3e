//! The stream: continuing and closing it, local replies, contexts, and the
//! foreign functions Envoy offers (`clear_route_cache`) or celroute adds.

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
         grpc_status: i32| {
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
                    // Envoy adds each header under its lower-cased name.
                    headers: headers
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect(),
                    body,
                    // -1 (and anything beyond 16) means none, as in Envoy.
                    grpc_status: u32::try_from(grpc_status).ok().filter(|s| *s <= 16),
                });
                Ok(())
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
    // The root context finishing after answering false to proxy_on_done.
    l.func_wrap("env", "proxy_done", |mut c: Ctx<'_>| {
        let state = c.data_mut();
        if !state.done_pending {
            return Ok(Status::NotFound as i32);
        }
        state.done_pending = false;
        Ok(Status::Ok as i32)
    })?;
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
    Ok(())
}
