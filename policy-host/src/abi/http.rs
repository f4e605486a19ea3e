//! Header maps and bodies of the request in flight, and of a callout's answer.

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
                    5 => &state.grpc_receive,
                    6 => &state.vm_configuration,
                    7 => &state.plugin_configuration,
                    2 | 3 | 8 => return Err(Status::NotFound.into()),
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
    Ok(())
}
