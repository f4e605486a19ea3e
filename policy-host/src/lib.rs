//! policy-host: a proxy-wasm host on wasmtime that runs the very
//! `celroute.wasm` Envoy runs, so policies are tested offline against the
//! production bytes.
//!
//! - [`abi`]: the host side of proxy-wasm ABI 0.2.1 and WASI preview1.
//! - [`vm`]: compiling the module once, and driving a VM's lifecycle as Envoy does.
//! - [`request`]: simulated requests with Envoy's headers and property encodings.
//! - [`policy`]: one policy in the filter; decisions as the filter reports them.
//! - [`testing`] and [`report`]: test files, coverage and output formats.
//! - [`publish`]: validated, atomic publication of a policy to Envoy's ECDS.
//! - [`replay`]: logged requests decided again with another policy.
//! - [`run`]: scripted exchanges through any proxy-wasm filter.

pub mod abi;
pub mod clock;
mod compile_cache;
pub mod environment;
pub mod exchange;
pub mod expect;
pub mod policy;
pub mod publish;
pub mod replay;
pub mod report;
pub mod request;
pub mod run;
pub mod scripted;
pub mod testing;
pub mod upstream;
pub mod vm;
pub mod wire;

use std::path::{Path, PathBuf};

/// Where the filter is looked for when `--wasm` is not given.
pub fn default_wasm_candidates() -> Vec<PathBuf> {
    let relative = Path::new("target/wasm32-wasip1/release/celroute.wasm");
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("CELROUTE_WASM") {
        candidates.push(PathBuf::from(path));
    }
    // Beside the policy-host binary in a cargo target directory.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.parent().and_then(Path::parent) {
            candidates.push(target.join("wasm32-wasip1/release/celroute.wasm"));
        }
    }
    // The current directory and its ancestors (a workspace checkout).
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            candidates.push(dir.join(relative));
            if !dir.pop() {
                break;
            }
        }
    }
    candidates
}
