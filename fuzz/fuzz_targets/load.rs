//! The policy loader: arbitrary YAML or JSON text, with CEL inside.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| celroute::engine::testing::fuzz::load(data));
