//! Decision logs and replay, end to end: real traffic through real Envoy
//! writes access-log lines; `policy-host replay` decides them again in the
//! real filter. With the same policy nothing changes; with a changed one it
//! reports exactly the shifts, denials and cost this test works out from
//! the replies the clients got.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use celroute_tests::http::chat;
use celroute_tests::{read_policy, repo_root, Stack};
use policy_host::replay::{read_logs, render, replay, PolicySource, ReplayReport};
use policy_host::vm::FilterModule;

/// One request the test sent, and what its client saw.
struct Sent {
    region: &'static str,
    tenant: &'static str,
    /// `gcp-europe-west4`, or `denied 403`.
    outcome: String,
    tokens: u64,
}

const REGIONS: [&str; 4] = ["eu", "us", "cn", ""];
const TENANTS: [&str; 3] = ["acme", "globex", ""];
const TASKS: [&str; 3] = ["reasoning", "", "chat"];

/// The shipped policy with two rules more, after the tenant check:
/// requests from `cn` are refused, and the tenant acme runs on Azure.
fn changed_policy() -> String {
    read_policy("eu-residency-cost.yaml").unwrap().replace(
        "  - name: reasoning\n",
        "  - name: no-cn\n    when: request.headers[?'x-user-region'].orValue('') == 'cn'\n    deny: {status: 451, message: not served in this region}\n  - name: acme-on-azure\n    when: request.headers[?'x-tenant'].orValue('') == 'acme'\n    prefer: [azure-westeurope]\n  - name: reasoning\n",
    )
}

fn price(cluster: &str) -> f64 {
    match cluster {
        "aws-us-east-1" => 0.50,
        "gcp-europe-west4" => 0.45,
        "azure-westeurope" => 0.48,
        "onprem-fra" => 0.10,
        other => panic!("unknown cluster {other}"),
    }
}

/// Sends a mix of users through the shipped envoy.yaml and returns what
/// they saw and the access log Envoy wrote.
fn traffic(dir: &Path) -> (Vec<Sent>, PathBuf) {
    let log = dir.join("access.log");
    let stack = Stack::start(|config| config.with_access_log(&log)).expect("stack starts");
    let mut sent = Vec::new();
    for i in 0..120usize {
        let (region, tenant, task) = (REGIONS[i % 4], TENANTS[(i / 4) % 3], TASKS[(i / 12) % 3]);
        let secret = format!("Bearer sk-secret-{i}");
        let mut headers = vec![("authorization", secret.as_str())];
        for (name, value) in [
            ("x-user-region", region),
            ("x-tenant", tenant),
            ("x-task", task),
        ] {
            if !value.is_empty() {
                headers.push((name, value));
            }
        }
        if i % 5 == 0 {
            headers.push(("x-priority", "latency"));
        }
        let reply = chat(stack.envoy.listener, &headers).expect("reply");
        let (outcome, tokens) = match reply.status {
            200 => (
                reply.cloud().expect("a cloud answered").to_string(),
                reply.json()["usage"]["total_tokens"]
                    .as_u64()
                    .expect("usage"),
            ),
            status => (format!("denied {status}"), 0),
        };
        sent.push(Sent {
            region,
            tenant,
            outcome,
            tokens,
        });
    }
    // Envoy writes the log from a buffer; wait until every request is in it.
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count();
        if lines >= sent.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the access log has {lines} of {} lines",
            sent.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (sent, log)
}

fn tally<'a>(outcomes: impl Iterator<Item = &'a String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.clone()).or_default() += 1;
    }
    counts
}

fn replay_with(module: &FilterModule, log: &Path, policy: &str, dir: &Path) -> ReplayReport {
    let path = dir.join(format!(
        "policy-{}.yaml",
        celroute::engine::content_version(policy)
    ));
    std::fs::write(&path, policy).unwrap();
    let logs = read_logs(&[log.to_path_buf()]).expect("the log reads");
    replay(module, &logs, &PolicySource::read(&path).unwrap(), None).expect("replay")
}

#[test]
fn replaying_envoys_access_log_reproduces_every_decision_and_exactly_the_shifts_of_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let (sent, log) = traffic(dir.path());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("sk-secret"),
        "the redacted authorization header reached the log"
    );
    assert!(text.contains("request.headers['authorization']") || !text.contains("authorization"));

    // Every field a record has is documented.
    let docs = std::fs::read_to_string(repo_root().join("docs/decision-logs.md")).unwrap();
    let table = docs
        .split_once("<!-- record-fields -->")
        .and_then(|(_, rest)| rest.split_once("<!-- /record-fields -->"))
        .expect("the record-fields table")
        .0;
    for line in text.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let record: serde_json::Value =
            serde_json::from_str(line["decision"].as_str().expect("a record")).unwrap();
        for key in record.as_object().unwrap().keys() {
            assert!(
                table.contains(&format!("| `{key}` |")),
                "the record field '{key}' is not in docs/decision-logs.md"
            );
        }
    }

    let module = FilterModule::load(&celroute_tests::envoy::wasm().unwrap()).unwrap();
    let seen = tally(sent.iter().map(|s| &s.outcome));

    // The same policy: every decision reproduced.
    let same = replay_with(
        &module,
        &log,
        &read_policy("eu-residency-cost.yaml").unwrap(),
        dir.path(),
    );
    assert_eq!(same.records, sent.len() as u64, "{}", render::text(&same));
    assert_eq!(same.unknown_total, 0, "{}", render::text(&same));
    assert_eq!(same.replayed, sent.len() as u64);
    assert_eq!(same.changed, 0, "{}", render::text(&same));
    assert_eq!(same.rule_changed, 0, "{}", render::text(&same));
    assert_eq!(
        same.before, seen,
        "the logged decisions are what clients saw"
    );
    assert_eq!(same.after, seen);
    assert_eq!(same.constraint_violations, 0);
    assert!(same.constraints["eu-residency"].applied > 0);

    // The changed policy: the test works out each request's fate itself.
    let mut expected_moves: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let (mut newly_denied, mut changed) = (0, 0);
    let (mut cost_before, mut cost_after) = (0.0, 0.0);
    for s in &sent {
        let after = if s.tenant.is_empty() {
            s.outcome.clone()
        } else if s.region == "cn" {
            "denied 451".to_string()
        } else if s.tenant == "acme" {
            "azure-westeurope".to_string()
        } else {
            s.outcome.clone()
        };
        if after != s.outcome {
            changed += 1;
            if after.starts_with("denied") {
                newly_denied += 1;
            }
        }
        if s.tokens > 0 {
            cost_before += s.tokens as f64 * price(&s.outcome) / 1000.0;
            if !after.starts_with("denied") {
                cost_after += s.tokens as f64 * price(&after) / 1000.0;
            }
        }
        *expected_moves
            .entry(s.outcome.clone())
            .or_default()
            .entry(after)
            .or_default() += 1;
    }
    let report = replay_with(&module, &log, &changed_policy(), dir.path());
    let shown = render::text(&report);
    assert_eq!(report.unknown_total, 0, "{shown}");
    assert_eq!(report.moves, expected_moves, "{shown}");
    assert_eq!(report.changed, changed, "{shown}");
    assert_eq!(report.newly_denied, newly_denied, "{shown}");
    assert_eq!(report.newly_allowed, 0, "{shown}");
    assert!(changed > 20, "the change moves a good part of the traffic");
    assert!(
        (report.cost_before - cost_before).abs() < 1e-6,
        "cost before: {} vs {cost_before}",
        report.cost_before
    );
    assert!(
        (report.cost_after - cost_after).abs() < 1e-6,
        "cost after: {} vs {cost_after}",
        report.cost_after
    );
    assert_eq!(report.constraint_violations, 0, "{shown}");
    assert!(
        report.constraints["eu-residency"].applied
            >= sent.iter().filter(|s| s.region == "eu").count() as u64
    );
    // What the people reading it see.
    assert!(shown.contains("azure-westeurope"), "{shown}");
    assert!(shown.contains("denied 451"), "{shown}");
}

/// Renders the HTML report in headless Chromium and reads the picture back
/// with OCR: the clusters and their shares must be there to see.
#[test]
fn the_html_report_shows_the_clusters_and_their_shares_when_rendered() {
    let (Some(chromium), Some(tesseract)) = (find("chromium"), find("tesseract")) else {
        panic!("chromium and tesseract are needed (make setup installs them)");
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // A log as Envoy writes it: 3 EU users on onprem-fra, 1 US user on aws.
    let line = |region: &str, cluster: &str| {
        let record = serde_json::json!({
            "v": 1, "policy": "0", "action": "route", "cluster": cluster, "rule": "cheapest",
            "cached": false,
            "read": {"request.headers['x-user-region']": region, "request.headers['x-tenant']": "acme",
                     "request.headers['x-task']": null, "request.headers['x-priority']": null},
        });
        serde_json::json!({"status": 200, "decision": record.to_string()}).to_string()
    };
    let lines = [
        line("eu", "onprem-fra"),
        line("eu", "onprem-fra"),
        line("eu", "onprem-fra"),
        line("us", "onprem-fra"),
    ];
    std::fs::write(&log, lines.join("\n")).unwrap();
    let module = FilterModule::load(&celroute_tests::envoy::wasm().unwrap()).unwrap();
    // onprem-fra priced out: EU users go to gcp (0.45), US users to gcp too.
    let policy = read_policy("eu-residency-cost.yaml").unwrap().replace(
        "jurisdiction: eu, price_per_1k_tokens: 0.10",
        "jurisdiction: eu, price_per_1k_tokens: 0.90",
    );
    let report = replay_with(&module, &log, &policy, dir.path());
    assert_eq!(
        report.after.get("gcp-europe-west4"),
        Some(&4),
        "{}",
        render::text(&report)
    );
    let html = dir.path().join("report.html");
    std::fs::write(&html, render::html(&report)).unwrap();
    assert!(
        !render::html(&report).contains("http://")
            || render::html(&report).matches("http").count() == 1,
        "the page loads nothing from elsewhere (the one URL is SVG's namespace)"
    );
    let png = dir.path().join("report.png");
    let status = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=2",
            "--window-size=900,700",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success() && png.is_file(),
        "chromium rendered no picture"
    );
    let ocr = Command::new(tesseract).arg(&png).arg("-").output().unwrap();
    let seen = String::from_utf8_lossy(&ocr.stdout).to_string();
    for expected in [
        "onprem-fra",
        "gcp-europe-west4",
        "100.0%",
        "0.0%",
        "before",
        "after",
    ] {
        assert!(
            seen.contains(expected),
            "'{expected}' is not visible in the rendered report; OCR read:\n{seen}"
        );
    }
    // Kept for people to look at when the test fails.
    let _ = std::fs::copy(&png, repo_root().join("target/replay-report.png"));
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}
