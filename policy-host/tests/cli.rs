//! The `policy-host` command against the real `celroute.wasm` (built by
//! `make wasm`) and the shipped policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn policy_host(args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_policy-host"))
        .current_dir(repo())
        .args(args)
        .output()
        .expect("policy-host runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn shipped_policies_pass_with_full_coverage() {
    let (code, out, err) = policy_host(&["test", "policies", "--coverage", "--threshold", "100"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  ok    EU users never leave the EU, even for the default"),
        "{out}"
    );
    let summary = out.lines().last().unwrap();
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");
    // One coverage line per shipped test file, every one complete.
    let coverage: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("coverage "))
        .collect();
    let files = std::fs::read_dir(repo().join("policies"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".test.yaml"))
        })
        .count();
    assert_eq!(coverage.len(), files, "{out}");
    assert!(
        coverage.iter().all(|l| l.ends_with("rules (100%)")),
        "{out}"
    );
    assert!(out.contains("coverage 4/4 rules (100%)"), "{out}");
}

fn temp_test_file(dir: &tempfile::TempDir, cases: &str) -> PathBuf {
    let policy = repo().join("policies/eu-residency-cost.yaml");
    let path = dir.path().join("wrong.test.yaml");
    std::fs::write(
        &path,
        format!("policy: {}\ncases:\n{cases}", policy.display()),
    )
    .unwrap();
    path
}

#[test]
fn a_wrong_expectation_fails_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_test_file(
        &dir,
        "  - name: EU users go to AWS (wrong)\n    request: {headers: {x-tenant: acme, x-user-region: eu, x-priority: latency}}\n    expect: {cluster: aws-us-east-1, rule: default}\n  - name: right\n    request: {headers: {x-tenant: a}}\n    expect: {cluster: onprem-fra}\n",
    );
    let (code, out, _) = policy_host(&["test", file.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("  FAIL  EU users go to AWS (wrong)"), "{out}");
    assert!(
        out.contains("expected  route to aws-us-east-1 by rule default"),
        "{out}"
    );
    assert!(
        out.contains("got       route to gcp-europe-west4 by rule first-candidate"),
        "{out}"
    );
    assert!(
        out.contains("eu-residency          require   constraint applied, excluded aws-us-east-1"),
        "{out}"
    );
    assert!(out.contains("  ok    right"), "{out}");
    assert_eq!(out.lines().last(), Some("1 passed, 1 failed"));

    let (code, out, _) = policy_host(&["test", file.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&out).expect("json output");
    assert_eq!(json["failed"], 1);
    assert_eq!(
        json["files"][0]["cases"][0]["decision"]["cluster"],
        "gcp-europe-west4"
    );

    let (code, out, _) = policy_host(&["test", file.to_str().unwrap(), "--format", "junit"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("<?xml"), "{out}");
    assert!(
        out.contains("<testsuites name=\"policy-host\" tests=\"2\" failures=\"1\">"),
        "{out}"
    );
    assert!(out.contains("<failure message=\"expected route to aws-us-east-1 by rule default; got route to gcp-europe-west4 by rule first-candidate\">"), "{out}");
}

#[test]
fn coverage_below_the_threshold_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = temp_test_file(&dir, "  - name: one\n    request: {headers: {x-tenant: a}}\n    expect: {cluster: onprem-fra, rule: cheapest}\n");
    let (code, out, err) = policy_host(&["test", file.to_str().unwrap(), "--threshold", "100"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("coverage 1/4 rules (25%)"), "{out}");
    assert!(
        out.contains("never took effect: eu-residency, block-unknown-tenant, reasoning"),
        "{out}"
    );
    assert!(
        err.contains("rule coverage 25% is below the threshold 100%"),
        "{err}"
    );
}

#[test]
fn invalid_test_files_and_policies_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.test.yaml");
    std::fs::write(&file, "policy: nowhere.yaml\ncases: []\n").unwrap();
    let (code, out, _) = policy_host(&["test", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("reading policy"), "{out}");
    std::fs::write(
        &file,
        "policy: x.yaml\ncases:\n  - name: a\n    expect: {clusterr: b}\n",
    )
    .unwrap();
    let (code, out, _) = policy_host(&["test", file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("unknown field `clusterr`"), "{out}");
    let (code, _, err) = policy_host(&["test", dir.path().join("missing").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("no such file or directory"), "{err}");
}

#[test]
fn eval_explains_rule_by_rule() {
    let (code, out, err) = policy_host(&[
        "eval",
        "policies/eu-residency-cost.yaml",
        "-H",
        "x-tenant=acme",
        "-H",
        "x-user-region=eu",
        "-H",
        "x-priority=latency",
    ]);
    assert_eq!(code, 0, "{err}");
    let expected = "route to gcp-europe-west4 by rule first-candidate
  eu-residency          require   constraint applied, excluded aws-us-east-1
  block-unknown-tenant  deny      not matched
  reasoning             prefer    not matched
  cheapest              order_by  not matched
  candidates after constraints: gcp-europe-west4, azure-westeurope, onprem-fra
";
    assert_eq!(out, expected);
    let (code, out, _) = policy_host(&[
        "eval",
        "policies/eu-residency-cost.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["status"], 403);
    assert_eq!(json["rule"], "block-unknown-tenant");
}

#[test]
fn check_reports_each_error_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "clusters: {aws-us-east-1: {jurisdiction: us}}\nrules:\n  - {name: eu-residency, require: \"cluster.jursidiction == 'eu'\"}\n  - {name: p, prefer: [aws-us-east1]}\n",
    )
    .unwrap();
    let (code, out, _) = policy_host(&[
        "check",
        "policies/eu-residency-cost.yaml",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        out.contains("policies/eu-residency-cost.yaml: ok (4 clusters, 4 rules;"),
        "{out}"
    );
    let bad = bad.display().to_string();
    assert!(out.contains(&format!("{bad}: rule 'eu-residency' (rules[0]): require: no cluster in the inventory has the attribute 'cluster.jursidiction' (did you mean 'jurisdiction'?) at line 1, column 9 in `cluster.jursidiction == 'eu'`")), "{out}");
    assert!(out.contains(&format!("{bad}: rule 'p' (rules[1]): prefer: unknown cluster 'aws-us-east1' (did you mean 'aws-us-east-1'?)")), "{out}");
    let (code, out, _) = policy_host(&["check", "policies/active-passive.yaml"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_missing_wasm_is_a_clear_error() {
    let (code, _, err) = policy_host(&[
        "--wasm",
        "/nonexistent/celroute.wasm",
        "check",
        "policies/active-passive.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/celroute.wasm"), "{err}");
}

#[test]
fn garbage_policies_and_requests_never_crash_the_host() {
    // Arbitrary bytes as a policy, and hostile requests through a real policy.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, [0xff, 0x00, b'{', b'[', 0x80]).unwrap();
    let (code, out, err) = policy_host(&["check", garbage.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("not UTF-8") || out.contains("policy:"),
        "{out}"
    );
    let long = "v".repeat(100_000);
    let header = format!("x-tenant={long}");
    let (code, out, err) = policy_host(&[
        "eval",
        "policies/eu-residency-cost.yaml",
        "-H",
        &header,
        "-H",
        "x-user-region=\u{00e9}\u{6771}",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("route to onprem-fra by rule cheapest"),
        "{out}"
    );
}

#[test]
fn publish_writes_the_ecds_resource_only_for_a_valid_tested_policy() {
    let live = tempfile::tempdir().unwrap();
    let to = live.path().to_str().unwrap();
    let (code, out, err) = policy_host(&["publish", "policies/eu-residency-cost.yaml", "--to", to]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(9 tests passed)"), "{out}");
    let written = std::fs::read_to_string(live.path().join("celroute.yaml")).unwrap();
    let policy = std::fs::read_to_string(repo().join("policies/eu-residency-cost.yaml")).unwrap();
    let version = celroute::engine::content_version(&policy);
    assert!(out.contains(&format!("version {version}")), "{out}");
    let resource: serde_json::Value = serde_yaml::from_str(&written).unwrap();
    assert_eq!(resource["version_info"], version.as_str());
    assert_eq!(
        resource["resources"][0]["typed_config"]["config"]["configuration"]["value"],
        policy.as_str()
    );
    assert_eq!(
        std::fs::read_dir(live.path()).unwrap().count(),
        1,
        "no temporary file is left behind"
    );
}

#[test]
fn publish_refuses_an_invalid_policy_and_a_failing_one_and_writes_nothing() {
    let live = tempfile::tempdir().unwrap();
    let to = live.path().to_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let bad = work.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "clusters: {a: {}}\nrules:\n  - {name: r, prefer: [b]}\n",
    )
    .unwrap();
    let (code, out, _) = policy_host(&["publish", bad.to_str().unwrap(), "--to", to]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the policy is invalid; nothing was published"),
        "{out}"
    );
    assert!(
        out.contains("rule 'r' (rules[0]): prefer: unknown cluster 'b'"),
        "{out}"
    );

    let good = work.path().join("p.yaml");
    std::fs::write(
        &good,
        "clusters: {a: {}, b: {}}\nrules:\n  - {name: r, prefer: [b]}\n",
    )
    .unwrap();
    std::fs::write(
        work.path().join("p.test.yaml"),
        "policy: p.yaml\ncases:\n  - name: goes to a (wrong)\n    expect: {cluster: a}\n",
    )
    .unwrap();
    let (code, out, _) = policy_host(&["publish", good.to_str().unwrap(), "--to", to]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the policy's tests failed; nothing was published"),
        "{out}"
    );
    assert!(out.contains("FAIL  goes to a (wrong)"), "{out}");
    assert_eq!(
        std::fs::read_dir(live.path()).unwrap().count(),
        0,
        "nothing was written"
    );

    // Without its tests, the same (valid) policy is published.
    let (code, out, _) =
        policy_host(&["publish", good.to_str().unwrap(), "--to", to, "--no-tests"]);
    assert_eq!(code, 0, "{out}");
    assert!(live.path().join("celroute.yaml").is_file());
}

#[test]
fn check_and_publish_refuse_a_policy_over_a_limit_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let live = tempfile::tempdir().unwrap();
    let list = format!(
        "[{}]",
        (0..100)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let expensive = work.path().join("expensive.yaml");
    std::fs::write(
        &expensive,
        format!(
            "clusters: {{a: {{x: 1}}}}\nrules:\n  - name: cube\n    require: \"{list}.all(i, {list}.all(j, {list}.all(k, i + j + k > cluster.x)))\"\n"
        ),
    )
    .unwrap();
    let deep = work.path().join("deep.yaml");
    std::fs::write(
        &deep,
        format!(
            "clusters: {{a: {{x: 1}}}}\nrules:\n  - name: deep\n    require: \"cluster{} == 1\"\n",
            ".x".repeat(1000)
        ),
    )
    .unwrap();
    let (code, out, err) =
        policy_host(&["check", expensive.to_str().unwrap(), deep.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("expensive.yaml: rule 'cube' (rules[0]): require: the expression's worst case is estimated at "), "{out}");
    assert!(out.contains(", over the limit of 100000 (options.limits.max_expression_cost); options.limits.max_expression_cost raises it, up to 10000000"), "{out}");
    assert!(out.contains("deep.yaml: rule 'deep' (rules[0]): require: the expression nests 1001 levels deep, over the limit of 32 (options.limits.max_expression_depth)"), "{out}");

    let (code, out, _) = policy_host(&[
        "publish",
        expensive.to_str().unwrap(),
        "--to",
        live.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("the policy is invalid; nothing was published"),
        "{out}"
    );
    assert!(
        out.contains("(options.limits.max_expression_cost)"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(live.path()).unwrap().count(), 0);
}

/// The built celroute.wasm, loaded.
fn filter_module() -> policy_host::vm::FilterModule {
    let wasm = policy_host::default_wasm_candidates()
        .into_iter()
        .find(|p| p.is_file())
        .expect("celroute.wasm is built (make wasm)");
    policy_host::vm::FilterModule::load(&wasm).unwrap()
}

/// An access log as the shipped configs write it, made by the real filter
/// deciding `count` requests under policies/eu-residency-cost.yaml: EU and
/// US users of the tenants acme and globex, half of them asking for reasoning.
fn decision_log(dir: &Path, count: usize) -> PathBuf {
    use policy_host::policy::LoadedPolicy;
    use policy_host::request::{Headers, RequestSpec};
    let module = filter_module();
    let policy = std::fs::read(repo().join("policies/eu-residency-cost.yaml")).unwrap();
    let mut loaded = LoadedPolicy::load(&module, &policy).unwrap();
    let mut lines = Vec::new();
    for i in 0..count {
        let headers = vec![
            ("x-user-region".to_string(), ["eu", "us"][i % 2].to_string()),
            (
                "x-tenant".to_string(),
                ["acme", "globex"][(i / 2) % 2].to_string(),
            ),
            (
                "x-task".to_string(),
                ["reasoning", "chat"][(i / 4) % 2].to_string(),
            ),
        ];
        let spec = RequestSpec {
            headers: Headers::List(headers),
            ..RequestSpec::default()
        };
        let record = loaded
            .evaluate(&spec)
            .unwrap()
            .record
            .expect("a decision record");
        lines.push(serde_json::json!({"status": 200, "decision": record}).to_string());
    }
    let log = dir.join("access.log");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    log
}

/// policies/eu-residency-cost.yaml, with the tenant acme sent to Azure:
/// it moves acme's reasoning and US traffic, half of acme's requests.
fn acme_on_azure(dir: &Path) -> PathBuf {
    let policy = std::fs::read_to_string(repo().join("policies/eu-residency-cost.yaml"))
        .unwrap()
        .replace(
            "  - name: reasoning\n",
            "  - name: acme-on-azure\n    when: request.headers[?'x-tenant'].orValue('') == 'acme'\n    prefer: [azure-westeurope]\n  - name: reasoning\n",
        );
    let path = dir.join("acme-on-azure.yaml");
    std::fs::write(&path, policy).unwrap();
    path
}

#[test]
fn replay_reports_no_change_for_the_logged_policy_and_the_moves_of_a_new_one() {
    let work = tempfile::tempdir().unwrap();
    let log = decision_log(work.path(), 40);
    let log = log.to_str().unwrap();
    let (code, out, err) = policy_host(&[
        "replay",
        log,
        "--policy",
        "policies/eu-residency-cost.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["replayed"], 40, "{out}");
    assert_eq!(report["changed"], 0, "{out}");
    assert_eq!(report["unknown_total"], 0, "{out}");

    let new = acme_on_azure(work.path());
    let (code, out, err) = policy_host(&["replay", log, "--policy", new.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // acme's EU requests went to gcp (reasoning) or onprem-fra (cheapest),
    // its US requests to gcp or onprem-fra: all 20 move to Azure.
    assert!(out.contains("changed: 20 of 40 requests (50.00%)"), "{out}");
    assert!(out.contains("-> azure-westeurope: "), "{out}");

    // Against the logging policy itself as the baseline: the same shifts.
    let (code, out, err) = policy_host(&[
        "replay",
        log,
        "--policy",
        new.to_str().unwrap(),
        "--baseline",
        "policies/eu-residency-cost.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["changed"], 20, "{out}");
    assert_eq!(report["shift_percent"], 50.0, "{out}");
    assert_eq!(
        report["baseline"]["file"], "policies/eu-residency-cost.yaml",
        "{out}"
    );

    let html = work.path().join("report.html");
    let (code, out, err) = policy_host(&[
        "replay",
        log,
        "--policy",
        new.to_str().unwrap(),
        "--format",
        "html",
        "-o",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("20 changed (50.00%)"), "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("<svg"),
        "{page}"
    );
    assert!(
        !page.contains("<script") && !page.contains("<link"),
        "{page}"
    );
}

#[test]
fn replay_names_the_line_it_cannot_read() {
    let work = tempfile::tempdir().unwrap();
    let log = decision_log(work.path(), 2);
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"decision\": \n");
    std::fs::write(&log, text).unwrap();
    let (code, out, err) = policy_host(&[
        "replay",
        log.to_str().unwrap(),
        "--policy",
        "policies/eu-residency-cost.yaml",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("access.log:3: not a JSON line"), "{err}");
}

#[test]
fn publish_with_a_replay_gate_refuses_a_large_shift_and_accepts_a_small_one_or_a_forced_one() {
    let work = tempfile::tempdir().unwrap();
    let log = decision_log(work.path(), 40);
    let log = log.to_str().unwrap();
    let new = acme_on_azure(work.path());
    let new = new.to_str().unwrap();
    let live = tempfile::tempdir().unwrap();
    let to = live.path().to_str().unwrap();
    let publish = |extra: &[&str]| {
        let mut args = vec!["publish", new, "--to", to, "--no-tests", "--replay", log];
        args.extend_from_slice(extra);
        policy_host(&args)
    };

    let (code, out, err) = publish(&["--max-shift", "10"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("not published: 50.00% of the replayed traffic would change cluster or outcome, more than --max-shift 10%"),
        "{out}"
    );
    assert!(
        out.contains("changed: 20 of 40 requests"),
        "the summary is printed: {out}"
    );
    assert_eq!(
        std::fs::read_dir(live.path()).unwrap().count(),
        0,
        "nothing was published"
    );

    let (code, out, err) = publish(&["--max-shift", "50"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("published "), "{out}");
    assert!(live.path().join("celroute.yaml").is_file());

    std::fs::remove_file(live.path().join("celroute.yaml")).unwrap();
    let (code, out, err) = publish(&["--max-shift", "10", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("publishing despite the replay gate (--force): 50.00%"),
        "{out}"
    );
    assert!(live.path().join("celroute.yaml").is_file());

    let (code, _, err) = publish(&["--max-shift", "150"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--max-shift 150: give a percentage from 0 to 100"),
        "{err}"
    );
    let (code, _, err) = policy_host(&["publish", new, "--to", to, "--max-shift", "5"]);
    assert_eq!(code, 2, "--max-shift needs --replay: {err}");
}

/// A policy that reads live state: the live values each decision saw are in
/// its record, and the replay restores them, so the same policy decides
/// every request alike, and a new preference order moves exactly the
/// requests decided while every cluster was healthy.
#[test]
fn replay_restores_the_live_state_each_logged_decision_saw() {
    use policy_host::policy::LoadedPolicy;
    use policy_host::replay::{read_logs, replay, PolicySource};
    use policy_host::request::{Headers, RequestSpec};
    use policy_host::scripted::{environment, replace_live};
    let module = filter_module();
    let failover = repo().join("policies/failover.yaml");
    let text = std::fs::read(&failover).unwrap();
    let mut loaded = LoadedPolicy::load_in(&module, &text, environment()).unwrap();
    let unhealthy = |clusters: &[&str]| -> serde_json::Map<String, serde_json::Value> {
        clusters
            .iter()
            .map(|c| (c.to_string(), serde_json::json!({"healthy": false})))
            .collect()
    };
    let clusters = loaded.description.clusters.clone();
    let mut lines = Vec::new();
    let mut logged = Vec::new();
    for (phase, down) in [
        &[][..],
        &["azure-westeurope"][..],
        &["azure-westeurope", "gcp-europe-west4"][..],
    ]
    .iter()
    .enumerate()
    {
        replace_live(&mut loaded, &clusters, &unhealthy(down)).unwrap();
        for i in 0..10 {
            let spec = RequestSpec {
                headers: Headers::List(vec![("x-user-region".into(), ["eu", "us"][i % 2].into())]),
                ..RequestSpec::default()
            };
            let evaluation = loaded.evaluate(&spec).unwrap();
            logged.push((phase, evaluation.decision.cluster().unwrap().to_string()));
            lines.push(serde_json::json!({"decision": evaluation.record.unwrap()}).to_string());
        }
    }
    // What the filter decided, as the policy says.
    let count = |phase: usize, cluster: &str| {
        logged
            .iter()
            .filter(|(p, c)| *p == phase && c == cluster)
            .count()
    };
    assert_eq!(count(0, "azure-westeurope"), 10, "{logged:?}");
    assert_eq!(count(1, "gcp-europe-west4"), 10, "{logged:?}");
    assert_eq!((count(2, "onprem-fra"), count(2, "aws-us-east-1")), (5, 5));

    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("access.log");
    std::fs::write(&log, lines.join("\n")).unwrap();
    let logs = read_logs(&[log]).unwrap();
    let same = replay(
        &module,
        &logs,
        &PolicySource::read(&failover).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(
        (
            same.replayed,
            same.unknown_total,
            same.changed,
            same.rule_changed
        ),
        (30, 0, 0, 0),
        "{}",
        policy_host::replay::render::text(&same)
    );
    let reordered = work.path().join("gcp-first.yaml");
    std::fs::write(
        &reordered,
        String::from_utf8(text).unwrap().replace(
            "prefer: [azure-westeurope, gcp-europe-west4,",
            "prefer: [gcp-europe-west4, azure-westeurope,",
        ),
    )
    .unwrap();
    let report = replay(
        &module,
        &logs,
        &PolicySource::read(&reordered).unwrap(),
        None,
    )
    .unwrap();
    let shown = policy_host::replay::render::text(&report);
    assert_eq!(report.changed, 10, "{shown}");
    assert_eq!(
        report.moves["azure-westeurope"]["gcp-europe-west4"], 10,
        "{shown}"
    );
    assert_eq!(report.constraint_violations, 0, "{shown}");
    assert!(report.constraints["healthy"].applied == 30, "{shown}");
}

#[test]
fn a_policy_reading_what_the_log_did_not_record_is_unknown_and_the_gate_refuses_it() {
    let work = tempfile::tempdir().unwrap();
    let log = decision_log(work.path(), 40);
    let log = log.to_str().unwrap();
    let policy = std::fs::read_to_string(repo().join("policies/eu-residency-cost.yaml"))
        .unwrap()
        .replace(
            "  - name: reasoning\n",
            "  - name: trial-plans\n    when: request.headers[?'x-plan'].orValue('') == 'trial'\n    prefer: [onprem-fra]\n  - name: reasoning\n",
        );
    let new = work.path().join("plans.yaml");
    std::fs::write(&new, policy).unwrap();
    let new = new.to_str().unwrap();
    let (code, out, err) = policy_host(&["replay", log, "--policy", new]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("unknown: 40 requests could not be replayed:\n  40: request.headers['x-plan'] was not recorded"),
        "{out}"
    );
    assert!(out.contains("replayed 0 of 40 logged requests"), "{out}");

    let live = tempfile::tempdir().unwrap();
    let to = live.path().to_str().unwrap();
    let (code, out, err) = policy_host(&[
        "publish",
        new,
        "--to",
        to,
        "--no-tests",
        "--replay",
        log,
        "--max-shift",
        "5",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("not published: none of the 40 logged requests could be replayed"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(live.path()).unwrap().count(), 0);
}

const EXAMPLE_WASM: &str = "target/wasm32-wasip1/release/example_filter.wasm";
const EXAMPLE_SCRIPT: &str = "examples/example-filter/example.run.yaml";

#[test]
fn run_takes_any_filter_through_a_script_and_checks_what_it_expects() {
    let (code, out, err) = policy_host(&["run", "--wasm", EXAMPLE_WASM, EXAMPLE_SCRIPT]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with("12 steps, 12 with expectations, 0 expectation(s) not met\n"),
        "{out}"
    );
    assert!(out.contains("--- step 1: GET /local/403"), "{out}");

    // The JSON report, with another plugin configuration from a file: no ticks.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "").unwrap();
    let (code, out, err) = policy_host(&[
        "run",
        "--wasm",
        EXAMPLE_WASM,
        EXAMPLE_SCRIPT,
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 1, "the tick expectations fail now: {out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["steps"][8]["ticks"], 0, "{out}");
    let failures: Vec<&str> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].starts_with("step 9 (advance 350ms): ticks: expected 3, got 0"),
        "{failures:?}"
    );
    assert_eq!(report["end"]["shared_data"], serde_json::json!({}));
}

#[test]
fn run_names_what_is_wrong_in_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "steps:\n  - advance: 5 seconds\n",
            "steps[0].advance: '5 seconds' is not a duration such as 250ms, 2s or 1m",
        ),
        (
            "steps:\n  - {request: {path: /}, advance: 1s}\n",
            "steps[0]: a step is exactly one of request, advance or shutdown",
        ),
        (
            "steps:\n  - {requets: {path: /}}\n",
            "unknown field `requets`",
        ),
        (
            "clock: yesterday\nsteps: []\n",
            "clock: 'yesterday' is neither an RFC 3339 time nor 'system'",
        ),
        (
            "route: {cluster: a, cluster_header: b}\nsteps: []\n",
            "route: give either cluster or cluster_header",
        ),
        (
            "route: {cluster: a}\nclusters: {b: {}}\nsteps: []\n",
            "route.cluster: 'a' is not one of the clusters (b)",
        ),
        (
            "configuration: \"abc\"\nsteps: []\n",
            "configuration 'abc' is not a tick period in milliseconds",
        ),
    ];
    for (i, (text, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("script{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let (code, out, err) =
            policy_host(&["run", "--wasm", EXAMPLE_WASM, path.to_str().unwrap()]);
        assert_eq!(code, 2, "{text}: {out}{err}");
        assert!(err.contains(message), "{text}: wanted {message:?} in {err}");
    }
}
