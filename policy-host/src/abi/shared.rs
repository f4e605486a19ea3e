//! Shared data and queues, in the store every VM of one environment shares.

use std::collections::VecDeque;

use wasmtime::Linker;

use crate::environment::SharedState;

use super::memory::*;
use super::*;

pub(super) fn add_to_linker(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| {
            finish((|| {
                let key = read_string(&mut c, key_ptr, key_len)?;
                let (value, cas) = c
                    .data()
                    .environment
                    .shared
                    .lock()
                    .data
                    .get(&key)
                    .cloned()
                    .ok_or(Status::NotFound)?;
                give(&mut c, &value, ptr_ptr, size_ptr)?;
                write_u32(&mut c, cas_ptr, cas)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, ptr: i32, len: i32, cas: i32| {
            finish((|| {
                let key = read_string(&mut c, key_ptr, key_len)?;
                let value = read(&mut c, ptr, len)?;
                let mut store = c.data().environment.shared.lock();
                let entry = store.data.entry(key).or_insert((Vec::new(), 0));
                if cas != 0 && cas as u32 != entry.1 {
                    return Err(Status::CasMismatch.into());
                }
                *entry = (value, entry.1.wrapping_add(1).max(1));
                Ok(())
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Ctx<'_>, name_ptr: i32, name_len: i32, id_ptr: i32| {
            finish((|| {
                let name = read_string(&mut c, name_ptr, name_len)?;
                let serial = c.data().serial;
                let mut store = c.data().environment.shared.lock();
                let queues = &mut store.queues;
                let id = match queues
                    .iter()
                    .position(|(vm, n, _)| vm.is_empty() && *n == name)
                {
                    Some(i) => i,
                    None => {
                        queues.push((String::new(), name, VecDeque::new()));
                        queues.len() - 1
                    }
                };
                // The registering VM is told when something is enqueued.
                store.queue_owners.insert(id as u32 + 1, serial);
                drop(store);
                write_u32(&mut c, id_ptr, id as u32 + 1)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Ctx<'_>, vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, id_ptr: i32| {
            finish((|| {
                let _vm = read_string(&mut c, vm_ptr, vm_len)?;
                let name = read_string(&mut c, name_ptr, name_len)?;
                let id = c
                    .data()
                    .environment
                    .shared
                    .lock()
                    .queues
                    .iter()
                    .position(|(_, n, _)| *n == name)
                    .ok_or(Status::NotFound)?;
                write_u32(&mut c, id_ptr, id as u32 + 1)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ptr_ptr: i32, size_ptr: i32| {
            finish((|| {
                let item = queue(&mut c.data().environment.shared.lock(), id)?
                    .pop_front()
                    .ok_or(Status::Empty)?;
                give(&mut c, &item, ptr_ptr, size_ptr)
            })())
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Ctx<'_>, id: i32, ptr: i32, len: i32| {
            finish((|| {
                let value = read(&mut c, ptr, len)?;
                let mut store = c.data().environment.shared.lock();
                queue(&mut store, id)?.push_back(value);
                if let Some(owner) = store.queue_owners.get(&(id as u32)).copied() {
                    store.queue_ready.push((owner, id as u32));
                }
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// A shared queue by the id the guest holds (ids start at 1).
fn queue(state: &mut SharedState, id: i32) -> HostResult<&mut VecDeque<Vec<u8>>> {
    let index = (id as u32 as usize)
        .checked_sub(1)
        .ok_or(Status::NotFound)?;
    Ok(&mut state.queues.get_mut(index).ok_or(Status::NotFound)?.2)
}
