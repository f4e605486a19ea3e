//! How fast policy-host runs policy test cases: 1,000 cases of the
//! EU-residency policy through the real celroute.wasm, in-process (median of
//! five runs) and as the `policy-host test` command on a 1,000-case file.
//!
//! `cargo bench -p policy-host` (needs `make wasm` first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use policy_host::policy::LoadedPolicy;
use policy_host::request::{Headers, RequestSpec};
use policy_host::vm::FilterModule;

const CASES: usize = 1000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn case(i: usize) -> RequestSpec {
    let mut headers = vec![("x-tenant".to_string(), format!("tenant-{i}"))];
    if i % 2 == 0 {
        headers.push(("x-user-region".into(), "eu".into()));
    }
    if i % 3 == 0 {
        headers.push(("x-priority".into(), "latency".into()));
    }
    if i % 5 == 0 {
        headers.push(("x-task".into(), "reasoning".into()));
    }
    RequestSpec {
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        headers: Headers::List(headers),
        ..RequestSpec::default()
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let wasm = repo().join("target/wasm32-wasip1/release/celroute.wasm");
    let bytes = std::fs::read(&wasm)?;
    let started = Instant::now();
    let module = FilterModule::from_bytes(&bytes)?;
    let compile = started.elapsed();
    let started = Instant::now();
    let cached = FilterModule::load(&wasm)?;
    let load = started.elapsed();
    drop(cached);

    let policy = std::fs::read(repo().join("policies/eu-residency-cost.yaml"))?;
    let cases: Vec<RequestSpec> = (0..CASES).map(case).collect();
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let mut loaded =
            LoadedPolicy::load(&module, &policy).map_err(|e| anyhow::anyhow!("{e}"))?;
        for spec in &cases {
            loaded.evaluate(spec)?;
        }
        samples.push(started.elapsed());
    }
    let in_process = median(samples);

    // The command, end to end, on a file of the same cases.
    let dir = tempfile::tempdir()?;
    let mut file = format!(
        "policy: {}\ncases:\n",
        repo().join("policies/eu-residency-cost.yaml").display()
    );
    for (i, spec) in cases.iter().enumerate() {
        let Headers::List(headers) = &spec.headers else {
            unreachable!()
        };
        let headers: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        file.push_str(&format!(
            "  - name: case {i}\n    request: {{method: POST, path: /v1/chat/completions, headers: {{{}}}}}\n    expect: {{cluster: any}}\n",
            headers.join(", ")
        ));
    }
    let path = dir.path().join("bench.test.yaml");
    std::fs::write(&path, file)?;
    let binary = repo().join("target/release/policy-host");
    let mut command_samples = Vec::new();
    if binary.is_file() {
        for _ in 0..5 {
            let started = Instant::now();
            // Every case fails its (deliberately unmatchable) expectation; the run still evaluates each.
            let output = std::process::Command::new(&binary)
                .arg("--wasm")
                .arg(&wasm)
                .arg("test")
                .arg(&path)
                .output()?;
            command_samples.push(started.elapsed());
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(
                text.contains(&format!("0 passed, {CASES} failed")),
                "{}",
                text.lines().last().unwrap_or("")
            );
        }
    }

    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "module compile (cold): {:.0} ms; load from cache: {:.0} ms",
        compile.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3
    );
    println!(
        "in-process: {CASES} cases in {:.0} ms (median of 5), {:.0} cases/s",
        in_process.as_secs_f64() * 1e3,
        CASES as f64 / in_process.as_secs_f64()
    );
    if !command_samples.is_empty() {
        let m = median(command_samples);
        println!(
            "`policy-host test` (cached module, one process): {CASES} cases in {:.0} ms (median of 5), {:.0} cases/s",
            m.as_secs_f64() * 1e3,
            CASES as f64 / m.as_secs_f64()
        );
    } else {
        println!("(build target/release/policy-host for the command figure: cargo build --release -p policy-host)");
    }
    Ok(())
}
