//! How fast `policy-host replay` decides logged requests again: 100,000
//! access-log lines (1,000 distinct requests decided by the real filter
//! under policies/eu-residency-cost.yaml, each logged 100 times), replayed
//! with a changed policy, alone and against a baseline policy (twice the
//! decisions). Median of three runs each.
//!
//! `cargo bench -p policy-host --bench replay` (needs `make wasm` first).

use std::path::PathBuf;
use std::time::Instant;

use policy_host::policy::LoadedPolicy;
use policy_host::replay::{read_logs, replay, PolicySource};
use policy_host::request::{Headers, RequestSpec};
use policy_host::vm::FilterModule;

const DISTINCT: usize = 1000;
const LINES: usize = 100_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() -> anyhow::Result<()> {
    let wasm = repo().join("target/wasm32-wasip1/release/celroute.wasm");
    let module = FilterModule::load(&wasm)?;
    let old_path = repo().join("policies/eu-residency-cost.yaml");
    let old = std::fs::read_to_string(&old_path)?;
    let mut loaded =
        LoadedPolicy::load(&module, old.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut records = Vec::with_capacity(DISTINCT);
    for i in 0..DISTINCT {
        let mut headers = vec![
            (
                "x-user-region".to_string(),
                ["eu", "us", "apac"][i % 3].to_string(),
            ),
            (
                "x-task".to_string(),
                ["reasoning", "chat", "summarize"][(i / 3) % 3].to_string(),
            ),
        ];
        if i % 7 != 0 {
            headers.push(("x-tenant".to_string(), format!("tenant-{}", i % 50)));
        }
        if i % 5 == 0 {
            headers.push(("x-priority".to_string(), "latency".to_string()));
        }
        let spec = RequestSpec {
            headers: Headers::List(headers),
            ..RequestSpec::default()
        };
        let evaluation = loaded.evaluate(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
        let record = evaluation
            .record
            .ok_or_else(|| anyhow::anyhow!("the policy keeps no decision log"))?;
        records.push(serde_json::json!({"status": 200, "decision": record}).to_string());
    }
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let text: Vec<&str> = (0..LINES).map(|i| records[i % DISTINCT].as_str()).collect();
    std::fs::write(&log, text.join("\n"))?;
    let new_path = dir.path().join("acme-on-azure.yaml");
    std::fs::write(
        &new_path,
        old.replace(
            "  - name: reasoning\n",
            "  - name: tenant-3-on-azure\n    when: request.headers[?'x-tenant'].orValue('') == 'tenant-3'\n    prefer: [azure-westeurope]\n  - name: reasoning\n",
        ),
    )?;
    let new = PolicySource::read(&new_path)?;
    let baseline = PolicySource::read(&old_path)?;

    let started = Instant::now();
    let logs = read_logs(&[log])?;
    let read_seconds = started.elapsed().as_secs_f64();
    println!(
        "read {} lines in {read_seconds:.2} s ({} MB)",
        logs.lines,
        std::fs::metadata(dir.path().join("access.log"))?.len() / 1_000_000
    );
    for (label, baseline) in [
        ("against the log", None),
        ("against a baseline policy", Some(&baseline)),
    ] {
        let mut runs = Vec::new();
        let mut changed = 0;
        for _ in 0..3 {
            let started = Instant::now();
            let report = replay(&module, &logs, &new, baseline)?;
            runs.push(started.elapsed().as_secs_f64());
            changed = report.changed;
            assert_eq!(report.replayed, LINES as u64, "every line replays");
        }
        runs.sort_by(f64::total_cmp);
        let median = runs[1];
        println!(
            "replay of {LINES} requests {label}: median {median:.2} s ({:.0} requests/s), {changed} changed; runs {runs:.2?}",
            LINES as f64 / median
        );
    }
    Ok(())
}
