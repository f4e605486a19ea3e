//! The inference parsers: JSON request bodies as policies read them, and
//! response bodies (JSON and server-sent events) scanned for token usage.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| celroute::engine::testing::fuzz::inference(data));
