//! celroute: a proxy-wasm HTTP filter that chooses the upstream cluster of each
//! request by CEL policy.
//!
//! The crate has two halves. [`engine`] parses, validates, compiles and
//! evaluates policies; it knows nothing about proxy-wasm and reads request
//! attributes through the [`engine::AttributeHost`] trait, so it is tested and
//! benchmarked natively. `plugin` (wasm32 only) is the thin proxy-wasm adapter
//! that Envoy loads as `celroute.wasm`.

pub mod engine;
pub mod signals;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod plugin;
