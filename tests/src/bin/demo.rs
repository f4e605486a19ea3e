//! The local multi-cloud demo: four simulated clouds, Envoy with
//! `envoy/envoy.yaml` (celroute and the EU-residency + cost policy), a few
//! requests that show which cloud served each; then a second Envoy with
//! `envoy/envoy-live.yaml` (live signals, the failover policy) under load
//! while a cloud is stopped and started again; then left running for curl.
//!
//! `demo --once` exits after the requests (used by the test command).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use celroute_tests::envoy::{Config, Envoy};
use celroute_tests::http::chat;
use celroute_tests::load;

fn main() -> Result<()> {
    let once = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--once") => true,
        Some(other) => bail!("unknown argument '{other}'; usage: demo [--once]"),
    };
    let mut config = Config::read("envoy.yaml")?;
    let clouds = config.cluster_addresses()?;
    // The decision log (standard output as shipped) goes to a file here.
    let decisions = celroute_tests::repo_root().join("target/demo/decisions.log");
    if let Some(dir) = decisions.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&decisions);
    let config = config.with_access_log(&decisions)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let specs: Vec<_> = clouds.iter().map(|(n, a)| (n.clone(), *a)).collect();
    let bound = runtime
        .block_on(celroute_tests::clouds::serve(&specs))
        .context("starting the simulated clouds (are ports 18001-18004 free?)")?;
    for cloud in &bound {
        println!("cloud {:<18} http://{}", cloud.name, cloud.address);
    }

    let started = Instant::now();
    let envoy = Envoy::start(&config).context(
        "starting Envoy with envoy/envoy.yaml (are ports 10000 and 9901 free? was `make setup` run?)",
    )?;
    println!(
        "envoy ready in {} ms: http://{} (admin http://{}), policy policies/eu-residency-cost.yaml\n",
        started.elapsed().as_millis(),
        envoy.listener,
        envoy.admin
    );

    show_requests(envoy.listener)?;

    let failover_log = celroute_tests::repo_root().join("target/demo/failover-decisions.log");
    let _ = std::fs::remove_file(&failover_log);
    let live = Envoy::start(&Config::read("envoy-live.yaml")?.with_access_log(&failover_log)?)
        .context("starting Envoy with envoy/envoy-live.yaml (are ports 10001 and 9902 free?)")?;
    println!(
        "\nLive failover: envoy http://{} (envoy/envoy-live.yaml, policy policies/failover.yaml), EU users, 4 connections",
        live.listener
    );
    let azure = bound
        .iter()
        .find(|c| c.name == "azure-westeurope")
        .map(|c| c.control.clone())
        .context("no azure-westeurope cloud")?;
    show_failover(live.listener, &azure)?;
    println!(
        "\nEach decision is in Envoy's access log (target/demo/decisions.log, and the failover part's in\ntarget/demo/failover-decisions.log); replay one with another policy:\n  cargo run -q -p policy-host -- replay target/demo/decisions.log --policy POLICY.yaml"
    );
    if once {
        return Ok(());
    }
    let at = envoy.listener;
    println!(
        "\nRunning; try:\n  curl -s http://{at}/v1/chat/completions -H 'x-tenant: acme' -H 'x-user-region: eu' -H 'x-priority: latency' -d '{{\"model\":\"m\",\"messages\":[]}}'\n  curl -si http://{at}/v1/chat/completions -d '{{}}'\n  curl -s http://{}/stats?filter=celroute\nEnvoy's log: {}\nCtrl-C to stop.",
        envoy.admin,
        envoy.log.display()
    );
    runtime.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}

/// Load while the primary cloud is stopped, then started again: who served
/// each phase, and how many requests failed.
fn show_failover(
    listener: std::net::SocketAddr,
    primary: &celroute_tests::clouds::Control,
) -> Result<()> {
    let eu = [("x-user-region", "eu"), ("x-tenant", "acme")];
    let phase = |label: &str, seconds: f64| {
        let samples = load::run(
            listener,
            4,
            Duration::from_secs_f64(seconds),
            Duration::from_millis(5),
            &eu,
        );
        let mut served: BTreeMap<String, usize> = BTreeMap::new();
        for s in &samples {
            *served
                .entry(s.cloud.clone().unwrap_or_else(|| "failed".into()))
                .or_default() += 1;
        }
        let shares: Vec<String> = served
            .iter()
            .map(|(cloud, n)| format!("{cloud} {:.0}%", 100.0 * *n as f64 / samples.len() as f64))
            .collect();
        println!(
            "{label:<44} {:>5} requests: {}",
            samples.len(),
            shares.join(", ")
        );
    };
    phase("all clouds up", 1.0);
    primary.set_down(true);
    phase("azure-westeurope stopped", 1.5);
    primary.set_down(false);
    phase("azure-westeurope back, breaker cooling down", 4.0);
    phase("after the cool-down (5 s), a probe closed it", 1.5);
    Ok(())
}

/// The demo's requests, each with what it shows.
const REQUESTS: [(&str, &[(&str, &str)]); 6] = [
    ("tenant acme, any task", &[("x-tenant", "acme")]),
    (
        "tenant acme, latency priority",
        &[("x-tenant", "acme"), ("x-priority", "latency")],
    ),
    (
        "EU user, latency priority",
        &[
            ("x-tenant", "acme"),
            ("x-priority", "latency"),
            ("x-user-region", "eu"),
        ],
    ),
    (
        "reasoning task",
        &[("x-tenant", "acme"), ("x-task", "reasoning")],
    ),
    (
        "EU user naming a US cluster itself",
        &[
            ("x-tenant", "acme"),
            ("x-priority", "latency"),
            ("x-user-region", "eu"),
            ("x-celroute-cluster", "aws-us-east-1"),
        ],
    ),
    ("no tenant header", &[]),
];

/// Sends each demo request through Envoy and prints who served it and why.
fn show_requests(listener: std::net::SocketAddr) -> Result<()> {
    println!(
        "{:<38} {:>6}  {:<18} decision",
        "request", "status", "served by"
    );
    for (label, headers) in REQUESTS {
        let reply = chat(listener, headers)?;
        let decision = match reply.cloud() {
            Some(_) => reply
                .header("x-celroute-decision")
                .unwrap_or("")
                .to_string(),
            None => reply.body.clone(),
        };
        println!(
            "{label:<38} {:>6}  {:<18} {decision}",
            reply.status,
            reply.cloud().unwrap_or("-"),
        );
    }
    Ok(())
}
