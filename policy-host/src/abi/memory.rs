//! Guest memory: reading and writing it bounds-checked, handing bytes to the
//! guest through its allocator, and the statuses a host call returns.

use wasmtime::{Caller, Extern, Memory};

use super::{HostState, MapType, Status};

/// Why a host call did not complete: a status for the guest, or a trap
/// (the guest's allocator failed) that ends the callback.
pub(super) enum Failure {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Failure {
        Failure::Status(status)
    }
}

pub(super) type HostResult<T = ()> = Result<T, Failure>;

pub(super) fn finish(result: HostResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok as i32),
        Err(Failure::Status(status)) => Ok(status as i32),
        Err(Failure::Trap(error)) => Err(error),
    }
}

pub(super) type Ctx<'a> = Caller<'a, HostState>;

pub(super) fn memory(caller: &mut Ctx<'_>) -> HostResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(memory)) => Ok(memory),
        _ => Err(Status::InvalidMemoryAccess.into()),
    }
}

/// wasm32 pointers and sizes are unsigned 32-bit values carried in i32s.
pub(super) fn range(ptr: i32, len: i32) -> HostResult<(usize, usize)> {
    Ok((ptr as u32 as usize, len as u32 as usize))
}

pub(super) fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> HostResult<Vec<u8>> {
    let memory = memory(caller)?;
    let (start, len) = range(ptr, len)?;
    let data = memory.data(&*caller);
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    data.get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(Status::InvalidMemoryAccess.into())
}

pub(super) fn read_string(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> HostResult<String> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|_| Status::BadArgument.into())
}

pub(super) fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> HostResult {
    let memory = memory(caller)?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(Status::InvalidMemoryAccess)?;
    memory
        .data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

pub(super) fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> HostResult {
    write(caller, ptr, &value.to_le_bytes())
}

/// Hands bytes to the guest: memory from its `proxy_on_memory_allocate`, then
/// the pointer and size written where it asked.
pub(super) fn give(caller: &mut Ctx<'_>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> HostResult {
    let size = u32::try_from(bytes.len()).map_err(|_| Status::BadArgument)?;
    let ptr = if bytes.is_empty() {
        0
    } else {
        let allocate = caller
            .get_export("proxy_on_memory_allocate")
            .and_then(Extern::into_func)
            .ok_or(Status::InvalidMemoryAccess)?
            .typed::<i32, i32>(&*caller)
            .map_err(|_| Status::InvalidMemoryAccess)?;
        let ptr = allocate
            .call(&mut *caller, size as i32)
            .map_err(Failure::Trap)?;
        if ptr == 0 {
            return Err(Status::InvalidMemoryAccess.into());
        }
        write(caller, ptr, bytes)?;
        ptr
    };
    write_u32(caller, ptr_ptr, ptr as u32)?;
    write_u32(caller, size_ptr, size)
}

/// The map and the header name of a header-map call; Envoy lower-cases names.
pub(super) fn map_and_key(
    c: &mut Ctx<'_>,
    map: i32,
    key_ptr: i32,
    key_len: i32,
) -> HostResult<(MapType, String)> {
    let map = map_type(map)?;
    Ok((map, read_string(c, key_ptr, key_len)?.to_ascii_lowercase()))
}

pub(super) fn map_type(value: i32) -> HostResult<MapType> {
    MapType::from_abi(value).ok_or(Failure::Status(Status::BadArgument))
}
