//! Properties: the request's and connection's attributes, as Envoy encodes them.

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
    Ok(())
}

/// A property path as the ABI passes it: segments separated by NUL bytes.
fn property_path(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}
