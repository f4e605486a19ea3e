//! Metrics: counters, gauges and histograms the guest defines.

use wasmtime::Linker;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
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
            // As Envoy: a counter only goes up (a zero or negative
            // increment is BadArgument); a gauge goes either way; a
            // histogram cannot be incremented.
            Ok(match metric {
                Some(m) if m.kind == 2 || (m.kind == 0 && offset <= 0) => {
                    Status::BadArgument as i32
                }
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
            // As Envoy: recording adds to a counter, sets a gauge, and
            // records a histogram sample (kept here as its last value).
            Ok(match metric {
                Some(m) if m.kind == 0 => {
                    m.value = m.value.saturating_add(value);
                    Status::Ok as i32
                }
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
