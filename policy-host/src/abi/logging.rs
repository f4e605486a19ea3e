//! Logging: `proxy_log` and the log level the guest is told.

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
    Ok(())
}
