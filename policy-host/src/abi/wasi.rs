//! WASI preview1, as Envoy provides it to a proxy-wasm module: no arguments,
//! no environment, no files; stdout and stderr go to the log.

use wasmtime::Linker;

use super::memory::*;
use super::*;

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

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
            // 0 realtime; 1 monotonic; 2 and 3 process and thread CPU time,
            // which a simulated VM approximates by the monotonic clock.
            let clock_source = &c.data().environment.clock;
            let now = if clock == 0 {
                clock_source.now_nanos()
            } else {
                clock_source.monotonic_nanos()
            };
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
