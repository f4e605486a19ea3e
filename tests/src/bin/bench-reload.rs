//! Reload latency: time from `publish` returning to the first request decided
//! by the new policy, on a keep-alive connection through real Envoy (ECDS).
//!
//! `bench-reload [RELOADS]` (default 60); prints median, p99 and extremes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use celroute_tests::ecds::policy_to;
use celroute_tests::envoy::wasm;
use celroute_tests::http::Connection;
use celroute_tests::Stack;
use policy_host::publish::{publish, PublishOptions};
use policy_host::vm::FilterModule;

fn main() -> Result<()> {
    let reloads: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("RELOADS is a number")?,
        None => 60,
    };
    let module = FilterModule::load(&wasm()?)?;
    let live = tempfile::tempdir()?;
    let work = tempfile::tempdir()?;
    let options = PublishOptions {
        to: live.path().to_path_buf(),
        name: "celroute".into(),
        code: wasm()?,
        run_tests: false,
    };
    let clouds = ["aws-us-east-1", "azure-westeurope"];
    let publish_to = |cluster: &str| -> Result<()> {
        let path = work.path().join(format!("{cluster}.yaml"));
        std::fs::write(&path, policy_to(cluster))?;
        publish(&module, &path, &options).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    };
    publish_to(clouds[0])?;
    let stack = Stack::start_from("envoy-ecds.yaml", |c| c.with_ecds_dir(live.path()))?;
    let mut connection = Connection::open(stack.envoy.listener)?;

    let mut samples = Vec::with_capacity(reloads);
    let mut requests = 0u64;
    for i in 1..=reloads {
        let target = clouds[i % 2];
        publish_to(target)?;
        let published = Instant::now();
        loop {
            let reply = connection.send("GET", "/", &[], b"")?;
            requests += 1;
            if reply.cloud() == Some(target) {
                samples.push(published.elapsed());
                break;
            }
            if published.elapsed() > Duration::from_secs(10) {
                bail!("reload {i} to {target} not live after 10 s");
            }
        }
        // Let the file system settle between reloads.
        std::thread::sleep(Duration::from_millis(50));
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "reloads: {reloads} on {} cores; publish-return to first request on the new policy: median {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms ({requests} requests)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
    Ok(())
}
