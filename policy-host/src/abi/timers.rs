//! Time and timers: the clock the environment gives, and the tick period.

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ptr: i32| {
            let now = c.data().environment.clock.now_nanos();
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
    Ok(())
}
