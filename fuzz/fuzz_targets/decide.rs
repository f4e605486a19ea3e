//! The decision path with arbitrary header names and values and property bytes; an EU user is never routed outside the EU.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| celroute::engine::testing::fuzz::decide(data));
