//! One CEL expression, as a require and as a when: parser, load-time checks, cost estimate, evaluation.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| celroute::engine::testing::fuzz::expression(data));
