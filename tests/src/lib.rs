//! Test and demo harness: simulated clouds, a real Envoy running
//! `celroute.wasm`, and a small HTTP client, all on loopback.

pub mod bench;
pub mod bench_envoy;
pub use celroute_sim as clouds;
pub mod compose;
pub mod ecds;
pub mod envoy;
pub mod http;
pub mod live;
pub mod load;
pub mod scenarios;
pub mod tls;

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

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;

/// The simulated clouds of [`CLOUDS`] on free loopback ports, served by a
/// runtime of their own; they stop when it is dropped.
pub fn start_clouds() -> Result<(tokio::runtime::Runtime, BTreeMap<String, SocketAddr>)> {
    let (runtime, clouds, _feed) = start_controlled_clouds()?;
    let addresses = clouds.into_iter().map(|(n, c)| (n, c.address)).collect();
    Ok((runtime, addresses))
}

/// The simulated clouds of [`CLOUDS`] with their controls (faults, load),
/// and a signals feed, on free loopback ports, served by a runtime of their
/// own; they stop when it is dropped.
pub fn start_controlled_clouds() -> Result<(
    tokio::runtime::Runtime,
    BTreeMap<String, clouds::Cloud>,
    clouds::Feed,
)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let specs: Vec<(String, SocketAddr)> = CLOUDS
        .iter()
        .map(|name| (name.to_string(), SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect();
    let bound = runtime.block_on(clouds::serve(&specs))?;
    let feed = runtime.block_on(clouds::serve_feed(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let clouds = bound.into_iter().map(|c| (c.name.clone(), c)).collect();
    Ok((runtime, clouds, feed))
}

/// Simulated clouds plus an Envoy routing to them, from `envoy/envoy.yaml`
/// as edited by `edit`. Field order matters: Envoy stops before the clouds.
pub struct Stack {
    pub envoy: envoy::Envoy,
    /// The clouds Envoy routes to, with their controls and counters.
    pub clouds: BTreeMap<String, clouds::Cloud>,
    _runtime: tokio::runtime::Runtime,
}

impl Stack {
    pub fn start(edit: impl FnOnce(envoy::Config) -> Result<envoy::Config>) -> Result<Stack> {
        Stack::start_from("envoy.yaml", edit)
    }

    /// Like [`Stack::start`], from another config under `envoy/`.
    pub fn start_from(
        config: &str,
        edit: impl FnOnce(envoy::Config) -> Result<envoy::Config>,
    ) -> Result<Stack> {
        let (runtime, clouds, _feed) = start_controlled_clouds()?;
        let addresses = clouds.iter().map(|(n, c)| (n.clone(), c.address)).collect();
        let config = edit(envoy::Config::shipped(config, &addresses)?)?;
        let envoy = envoy::Envoy::start(&config)?;
        Ok(Stack {
            envoy,
            clouds,
            _runtime: runtime,
        })
    }
}

/// A file under `policies/`.
pub fn read_policy(file: &str) -> Result<String> {
    let path = repo_root().join("policies").join(file);
    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))
}
