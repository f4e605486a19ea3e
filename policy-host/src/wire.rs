//! The proxy-wasm wire encoding of header maps, shared by the ABI and the
//! simulated request: a leaf module, imported by both.

/// A header map: lower-case names, values as bytes, order kept, names may repeat.
pub type HeaderMap = Vec<(String, Vec<u8>)>;

/// The ABI's serialized map: count, (key size, value size) pairs, then each
/// key and value followed by a NUL.
pub fn serialize_map(map: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Parses a serialized map; `None` when it is malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<HeaderMap> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    let mut sizes = Vec::with_capacity(count.min(4096));
    for i in 0..count {
        sizes.push((u32_at(4 + i * 8)?, u32_at(8 + i * 8)?));
    }
    let mut at = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut map = Vec::with_capacity(sizes.len());
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?;
        at = at.checked_add(k)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at = at.checked_add(v)?.checked_add(1)?;
        map.push((String::from_utf8(key.to_vec()).ok()?, value.to_vec()));
    }
    Some(map)
}
