//! Shared data (one key-value store for all of the VM's workers) updated
//! with compare-and-swap: the one way workers change a value they share.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// How often a worker tries again when another changed the value first.
const CAS_ATTEMPTS: usize = 16;

/// Replaces the value at `key` by `change(current)`; false when other
/// workers kept winning or the host refused.
pub(super) fn update(key: &str, mut change: impl FnMut(Option<&[u8]>) -> Vec<u8>) -> bool {
    for _ in 0..CAS_ATTEMPTS {
        let Ok((bytes, cas)) = hostcalls::get_shared_data(key) else {
            return false;
        };
        let next = change(bytes.as_deref());
        match hostcalls::set_shared_data(key, Some(&next), cas) {
            Ok(()) => return true,
            Err(Status::CasMismatch) => continue,
            Err(_) => return false,
        }
    }
    false
}
