//! The live-signal parsers: the signals feed document, ORCA load reports,
//! Prometheus metrics, and the shared-data record every worker merges into.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| celroute::engine::testing::fuzz::signals(data));
