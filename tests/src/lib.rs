//! Test and demo harness: simulated clouds, a real Envoy running
//! `celroute.wasm`, and a small HTTP client, all on loopback.

pub mod clouds;
pub mod envoy;
pub mod http;

use std::path::PathBuf;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// The four clouds of the shipped inventory, in inventory order.
pub const CLOUDS: [&str; 4] = [
    "aws-us-east-1",
    "gcp-europe-west4",
    "azure-westeurope",
    "onprem-fra",
];
