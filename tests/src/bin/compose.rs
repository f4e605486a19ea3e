//! The docker-compose demo (deploy/compose/), driven from the host.
//!
//!   compose up               put celroute.wasm and policies/multi-cloud.yaml where the
//!                            replicas mount them, `up -d`, wait for the first routed request
//!   compose scenarios        the scenarios under load, with per-cloud shares before and after
//!   compose scenarios --check   the same, failing unless each scenario shows what it must
//!   compose test             up, scenarios --check, the replicas' decision logs replayed,
//!                            Prometheus, the OCI image, down: the test `make test` runs
//!   compose down             `down -v`
//!
//! The images must exist (`make compose-images`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use celroute_tests::compose::{self, Compose, Load, Phase};
use celroute_tests::repo_root;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["up"] => {
            let compose = Compose::find()?;
            up(&compose)?;
            println!(
                "\nEntry: http://127.0.0.1:{}  replicas: http://127.0.0.1:10081, :10082 (admin :9911, :9912)\nPrometheus: http://127.0.0.1:{}  (saved graphs: deploy/compose/README.md)\nScenarios: make compose-scenarios   Stop: make compose-down",
                compose::ENTRY,
                compose::PROMETHEUS
            );
            Ok(())
        }
        ["scenarios"] => scenarios(&Compose::find()?, false),
        ["scenarios", "--check"] => scenarios(&Compose::find()?, true),
        ["test"] => test(),
        ["down"] => Compose::find()?.down(),
        _ => bail!("usage: compose up | scenarios [--check] | test | down"),
    }
}

fn wasm() -> PathBuf {
    repo_root().join("target/wasm32-wasip1/release/celroute.wasm")
}

fn up(compose: &Compose) -> Result<Duration> {
    compose.prepare(&wasm())?;
    let took = compose.up()?;
    println!(
        "docker-compose up to the first routed request: {} ms",
        took.as_millis()
    );
    Ok(took)
}

/// The test: skipped, loudly, where no Docker engine answers.
fn test() -> Result<()> {
    let compose = match Compose::find() {
        Ok(compose) => compose,
        Err(e) => {
            println!("SKIPPED: the docker-compose test needs a Docker engine: {e:#}");
            return Ok(());
        }
    };
    let _ = compose.down();
    let result = up(&compose)
        .and_then(|_| scenarios(&compose, true))
        .and_then(|_| decision_logs_replay(&compose))
        .and_then(|_| prometheus_saw_the_fleet())
        .and_then(|_| oci_image_holds_the_module());
    if result.is_err() {
        if let Ok(logs) = compose.run(&["logs", "--tail", "40"]) {
            eprintln!("{logs}");
        }
    }
    let down = compose.down();
    result?;
    down?;
    println!("docker-compose test passed");
    Ok(())
}

/// Measures `seconds` of the load, after `settle` seconds of it.
fn measure(load: &Load, settle: f64, seconds: f64) -> Phase {
    std::thread::sleep(Duration::from_secs_f64(settle));
    load.take();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    Phase::of(&load.take())
}

fn show(step: &str, phase: &Phase) {
    println!(
        "{step:<44} {:>5} requests  {}{}",
        phase.requests,
        phase.shares(),
        if phase.failed > 0 {
            format!("  ({} failed)", phase.failed)
        } else {
            String::new()
        }
    );
}

/// Fails the check (or, without `check`, only says so).
struct Checks {
    check: bool,
    failures: Vec<String>,
}

impl Checks {
    fn expect(&mut self, ok: bool, what: String) {
        if !ok {
            println!("  NOT AS EXPECTED: {what}");
            self.failures.push(what);
        }
    }
    fn everyone_on_premises_through_both_replicas(&mut self, phase: &Phase) {
        self.at_least(phase, "EU", "onprem-fra", 0.95);
        self.at_least(phase, "US", "onprem-fra", 0.95);
        self.expect(
            phase.replicas.len() == 2,
            format!("both replicas answer: {:?}", phase.replicas),
        );
    }
    fn at_least(&mut self, phase: &Phase, group: &str, cloud: &str, share: f64) {
        let got = phase.share(group, cloud);
        self.expect(
            got >= share,
            format!(
                "{group} users on {cloud}: {:.0}% (at least {:.0}% expected)",
                got * 100.0,
                share * 100.0
            ),
        );
    }
}

fn scenarios(compose: &Compose, check: bool) -> Result<()> {
    let mut checks = Checks {
        check,
        failures: Vec::new(),
    };
    // A known starting point: all clouds up and idle, list prices, the demo's policy.
    for (service, _, _) in compose::CLOUDS {
        compose.start(service)?;
        compose::control_cloud(
            service,
            serde_json::json!({"queue_depth": 0, "down": false}),
        )?;
    }
    compose::set_feed_prices(&compose::LIST_PRICES)?;
    let policy = repo_root().join("policies").join(compose::POLICY);
    let first_version = compose.publish(&wasm(), &policy)?;

    println!(
        "Load: {} EU users and {} US users on http://127.0.0.1:{} (two celroute replicas); policy policies/{}",
        2,
        2,
        compose::ENTRY,
        compose::POLICY
    );
    let load = Load::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], compose::ENTRY)),
        2,
    );
    let mut all = Vec::new();

    let phase = measure(&load, 2.0, 3.0);
    show("1. all clouds up, on-premises has room", &phase);
    checks.everyone_on_premises_through_both_replicas(&phase);
    all.push(phase);

    compose::control_cloud("onprem", serde_json::json!({"queue_depth": 50}))?;
    let phase = measure(&load, 2.0, 3.0);
    show("2. on-premises saturated (queue 50 > 20)", &phase);
    checks.at_least(&phase, "EU", "gcp-europe-west4", 0.95);
    checks.at_least(&phase, "US", "aws-us-east-1", 0.95);
    all.push(phase);

    compose::set_feed_prices(&[
        ("aws-us-east-1", 0.30),
        ("gcp-europe-west4", 2.00),
        ("azure-westeurope", 0.48),
    ])?;
    let phase = measure(&load, 2.0, 3.0);
    show("3. feed: gcp price 0.45 -> 2.00", &phase);
    checks.at_least(&phase, "EU", "azure-westeurope", 0.95);
    checks.at_least(&phase, "US", "aws-us-east-1", 0.95);
    all.push(phase);

    // The stop, under load: every answer from the stop until 3 s after it.
    load.take();
    let stopping = Instant::now();
    compose.stop("azure")?;
    let stop_took = stopping.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let stopped = load.take();
    let during = Phase::of(&stopped);
    show("4. docker compose stop azure (under load)", &during);
    for failure in stopped.iter().filter_map(|s| s.failure.as_deref()).take(5) {
        println!("   failed: {failure}");
    }
    println!(
        "   stop took {} ms; {} of {} requests failed during and after it",
        stop_took.as_millis(),
        during.failed,
        during.requests
    );
    checks.expect(
        during.failed == 0,
        format!("{} requests failed when azure stopped", during.failed),
    );
    let phase = measure(&load, 0.0, 2.0);
    show("   then", &phase);
    checks.at_least(&phase, "EU", "gcp-europe-west4", 0.95);
    all.push(during);
    all.push(phase);

    // One publish, to the directory both replicas watch.
    let raised = std::env::temp_dir().join(format!("celroute-compose-{}", std::process::id()));
    std::fs::create_dir_all(&raised)?;
    let text = std::fs::read_to_string(&policy)?
        .replace("name: multi-cloud\n", "name: multi-cloud-bigger-queue\n")
        .replace("<= 20.0", "<= 100.0");
    let raised_policy = raised.join("multi-cloud-bigger-queue.yaml");
    std::fs::write(&raised_policy, text)?;
    let published = Instant::now();
    let version = compose.publish(&wasm(), &raised_policy)?;
    let _ = std::fs::remove_dir_all(&raised);
    let mut live_on = Vec::new();
    for (replica, port, _) in compose::REPLICAS {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = compose::send(address, &compose::EU_USER);
            let now = answer
                .as_ref()
                .ok()
                .and_then(|s| s.decision.as_deref())
                .and_then(compose::policy_version)
                == Some(version.as_str());
            if now {
                live_on.push((replica, published.elapsed()));
                break;
            }
            if Instant::now() > deadline {
                checks.expect(
                    false,
                    format!("{replica} never answered with policy {version}"),
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let phase = measure(&load, 1.0, 3.0);
    show("5. published once: on-premises queue limit 100", &phase);
    println!(
        "   policy {version} (was {first_version}) live on {}",
        live_on
            .iter()
            .map(|(r, t)| format!("{r} after {} ms", t.as_millis()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    checks.everyone_on_premises_through_both_replicas(&phase);
    all.push(phase);

    // Back to the start: the cloud, its queue, the prices and the policy.
    compose.start("azure")?;
    compose::control_cloud("onprem", serde_json::json!({"queue_depth": 0}))?;
    compose::set_feed_prices(&compose::LIST_PRICES)?;
    compose.publish(&wasm(), &policy)?;
    let samples = load.stop();

    let outside: usize = all.iter().map(|p| p.eu_outside_eu).sum();
    let total: usize = all.iter().map(|p| p.requests).sum();
    println!(
        "EU residency: {outside} of {} EU requests left the EU ({total} requests in the measured phases, {} in all)",
        all.iter()
            .map(|p| p.by_group.get("EU").map_or(0, |c| c.values().sum::<usize>()))
            .sum::<usize>(),
        samples.len()
    );
    let everything = Phase::of(&samples);
    checks.expect(
        everything.eu_outside_eu == 0,
        format!(
            "{} EU requests reached aws-us-east-1",
            everything.eu_outside_eu
        ),
    );
    if checks.check && !checks.failures.is_empty() {
        bail!(
            "{} scenario checks failed:\n  {}",
            checks.failures.len(),
            checks.failures.join("\n  ")
        );
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The replicas' access logs, replayed in policy-host with the policy they
/// logged under (policies/multi-cloud.yaml, before the scenarios' publish):
/// every decision, live state included, must come out the same.
fn decision_logs_replay(compose: &Compose) -> Result<()> {
    use policy_host::replay::{read_logs, render, replay, PolicySource};
    let mut lines = Vec::new();
    for replica in ["celroute-1", "celroute-2"] {
        let text = compose.run(&["logs", "--no-color", replica])?;
        // `<container> | <line>`: the access log's JSON lines beside Envoy's own.
        lines.extend(
            (text.lines())
                .filter_map(|line| line.split_once("| ").map(|(_, rest)| rest.trim()))
                .filter(|line| line.starts_with('{'))
                .map(str::to_string),
        );
    }
    let file = std::env::temp_dir().join(format!("celroute-compose-{}.log", std::process::id()));
    std::fs::write(&file, lines.join("\n"))?;
    let mut log = read_logs(std::slice::from_ref(&file));
    let _ = std::fs::remove_file(&file);
    let policy = repo_root().join("policies/multi-cloud.yaml");
    let version = celroute::engine::content_version(&std::fs::read_to_string(&policy)?);
    if let Ok(log) = &mut log {
        log.entries.retain(|e| e.policy_version() == version);
    }
    let log = log?;
    let module = policy_host::vm::FilterModule::load(&wasm())?;
    let report = replay(&module, &log, &PolicySource::read(&policy)?, None)?;
    println!(
        "decision logs of both replicas: {} lines, {} decided under {version}; replayed {} with policies/multi-cloud.yaml in {:.1} s: {} changed, {} unknown, {} constraint violations",
        report.lines,
        report.records,
        report.replayed,
        report.seconds,
        report.changed,
        report.unknown_total,
        report.constraint_violations
    );
    if report.replayed < 1000
        || report.changed > 0
        || report.rule_changed > 0
        || report.unknown_total > 0
        || report.constraint_violations > 0
    {
        bail!(
            "the replay of the replicas' decisions differs:\n{}",
            render::text(&report)
        );
    }
    Ok(())
}

/// `make oci`'s image: one layer, holding plugin.wasm, byte for byte the
/// module, whose sha256 its label documents.
fn oci_image_holds_the_module() -> Result<()> {
    let tag = "celroute/celroute-wasm:compose-test";
    let wasm = wasm();
    let wasm_path = wasm.to_string_lossy().to_string();
    let built = run(
        &repo_root().join("deploy/images/build.sh").to_string_lossy(),
        &["oci", &wasm_path, tag],
    )?;
    let sha = run("sha256sum", &[&wasm_path])?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let inspect: serde_json::Value =
        serde_json::from_str(&run("docker", &["image", "inspect", tag])?)?;
    let image = &inspect[0];
    let layers = image["RootFS"]["Layers"].as_array().map_or(0, Vec::len);
    let label = image["Config"]["Labels"]["io.celroute.module.sha256"]
        .as_str()
        .unwrap_or_default();
    let container = run("docker", &["create", tag, "/plugin.wasm"])?;
    let copy = std::env::temp_dir().join(format!("celroute-oci-{}.wasm", std::process::id()));
    let copied = run(
        "docker",
        &[
            "cp",
            &format!("{container}:/plugin.wasm"),
            &copy.to_string_lossy(),
        ],
    );
    let _ = run("docker", &["rm", &container]);
    copied?;
    let same = std::fs::read(&copy)? == std::fs::read(&wasm)?;
    let _ = std::fs::remove_file(&copy);
    let _ = run("docker", &["rmi", tag]);
    println!(
        "OCI image: {built}; {layers} layer, {} bytes, plugin.wasm {} the module",
        image["Size"],
        if same { "is" } else { "IS NOT" }
    );
    if layers != 1 || label != sha || !same || !built.ends_with(&format!("sha256:{sha}")) {
        bail!("the OCI image does not hold the module as documented: {layers} layers, label {label}, module sha256 {sha}, same bytes {same}");
    }
    Ok(())
}

/// Prometheus scraped both replicas' celroute stats and the clouds' metrics.
fn prometheus_saw_the_fleet() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let queries = [
        ("decisions", "sum(celroute_decisions_by_cloud)"),
        ("tokens", "sum(celroute_tokens_by_cloud)"),
        ("spend", "sum(celroute_spend_by_cloud)"),
        ("replicas scraped", "count(up{job=\"envoy\"} == 1)"),
        ("clouds scraped", "count(vllm:num_requests_waiting)"),
    ];
    let mut last = String::new();
    while Instant::now() < deadline {
        let values: Vec<(&str, f64)> = queries
            .iter()
            .map(|(what, q)| (*what, compose::prometheus_sum(q).unwrap_or(0.0)))
            .collect();
        last = values
            .iter()
            .map(|(w, v)| format!("{w} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ok = values[0].1 > 0.0
            && values[1].1 > 0.0
            && values[2].1 > 0.0
            && values[3].1 == 2.0
            && values[4].1 >= 3.0;
        if ok {
            println!("Prometheus: {last}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("Prometheus on 127.0.0.1:9090 did not show the fleet within 20 s: {last}")
}
