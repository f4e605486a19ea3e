//! Request attributes from the proxy, through the engine's host trait.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

use crate::engine::{AttributeHost, SpendBudget};

/// Request attributes from the proxy, counting each host call.
///
/// A call into the host costs more in V8 than a decision from the cache, so
/// the request headers come in one call, on first use, and the request
/// attributes Envoy itself derives from pseudo-headers (`request.path`,
/// `url_path`, `host`, `method`, `scheme`) are read from them the way Envoy
/// computes them.
pub(super) struct ProxyHost<'a> {
    pub(super) fetches: u64,
    pub(super) headers: Option<Vec<(String, Vec<u8>)>>,
    /// `request.body`, encoded, once the body is complete.
    pub(super) body: Option<Vec<u8>>,
    /// The policy's budgets, and the time (seconds since the epoch) whose
    /// window they are read in.
    pub(super) budgets: &'a [SpendBudget],
    pub(super) now_secs: u64,
}

impl ProxyHost<'_> {
    pub(super) fn headers(&mut self) -> &[(String, Vec<u8>)] {
        if self.headers.is_none() {
            self.fetches += 1;
            self.headers =
                Some(hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default());
        }
        self.headers.as_deref().unwrap_or_default()
    }

    /// The first value of a header, as Envoy's single-header lookup gives it.
    pub(super) fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.headers()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

impl AttributeHost for ProxyHost<'_> {
    fn budget_spent(&mut self, name: &str) -> f64 {
        let Some(budget) = self.budgets.iter().find(|b| b.name == name) else {
            return 0.0;
        };
        let key = super::spend::key_of(budget, |header| self.header(header).map(<[u8]>::to_vec));
        self.fetches += 1;
        super::spend::spent(budget, &key, self.now_secs)
    }

    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.header(name).map(<[u8]>::to_vec)
    }

    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)> {
        self.headers().to_vec()
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        if path == ["request", "body"] {
            return self.body.clone();
        }
        let pseudo = match path {
            ["request", "path"] | ["request", "url_path"] => Some(":path"),
            ["request", "host"] => Some(":authority"),
            ["request", "method"] => Some(":method"),
            ["request", "scheme"] => Some(":scheme"),
            _ => None,
        };
        match pseudo {
            Some(name) => {
                let value = self.header(name)?;
                let value = if path[1] == "url_path" {
                    // Envoy's url_path: the path without its query string.
                    let end = value.iter().position(|&b| b == b'?').unwrap_or(value.len());
                    &value[..end]
                } else {
                    value
                };
                Some(value.to_vec())
            }
            None => {
                self.fetches += 1;
                get_property(path)
            }
        }
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    pub(super) fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> proxy_wasm::types::Status;
}

/// A host property, telling an empty value from an absent one.
///
/// Envoy answers an empty value (`request.query` of a path without `?`,
/// `connection.requested_server_name` without SNI) with `Ok` and no data,
/// which the SDK's `get_property` reads as absent; Envoy's own CEL reads it
/// as the empty string, and so does celroute.
fn get_property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the address and size of a buffer it allocated
    // with proxy_on_memory_allocate, whose ownership passes to the guest.
    let status =
        unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    match status {
        proxy_wasm::types::Status::Ok if data.is_null() || size == 0 => Some(Vec::new()),
        // SAFETY: as above; the buffer is `size` bytes allocated by the guest's allocator.
        proxy_wasm::types::Status::Ok => Some(unsafe { Vec::from_raw_parts(data, size, size) }),
        _ => None,
    }
}
