//! End to end: real Envoy 1.40 (V8) running `celroute.wasm`, real simulated
//! clouds on loopback, real HTTP requests.

// Test helpers may fail loudly: a failure here is a failed test, not a crashed proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use celroute_tests::envoy::{self, Config};
use celroute_tests::http::{chat, request, Connection, Reply};
use celroute_tests::{repo_root, Stack};

fn stack(policy_file: Option<&str>) -> Stack {
    stack_with(|config| match policy_file {
        Some(file) => config.with_policy(&read_policy(file)),
        None => Ok(config),
    })
}

fn stack_with(edit: impl FnOnce(Config) -> anyhow::Result<Config>) -> Stack {
    Stack::start(edit).expect("clouds and Envoy start")
}

fn read_policy(file: &str) -> String {
    celroute_tests::read_policy(file).expect("policy file")
}

fn served_by(reply: &Reply) -> &str {
    reply
        .cloud()
        .unwrap_or_else(|| panic!("no cloud answered: {} {}", reply.status, reply.body))
}

#[test]
fn shipped_configs_embed_the_shipped_policies_and_validate() {
    for (file, policy, name) in [
        ("envoy.yaml", "eu-residency-cost.yaml", "eu-residency-cost"),
        ("envoy-live.yaml", "failover.yaml", "failover"),
    ] {
        let mut config = Config::shipped(file, &BTreeMap::new()).expect("shipped config");
        assert_eq!(
            config.policy().expect("policy"),
            read_policy(policy),
            "envoy/{file} must embed policies/{policy} verbatim"
        );
        let (ok, output) =
            envoy::validate_file(&repo_root().join("envoy").join(file)).expect("validate");
        assert!(ok, "{file}: envoy --mode validate failed:\n{output}");
        assert!(
            output.contains(&format!("loaded policy '{name}'")),
            "{output}"
        );
    }
}

#[test]
fn every_shipped_policy_passes_envoy_validate() {
    for file in [
        "eu-residency-cost.yaml",
        "task-specialization.yaml",
        "active-passive.yaml",
        "failover.yaml",
        "lowest-latency.yaml",
        "hybrid-burst.yaml",
        "cheapest-live.yaml",
        "weighted-split.yaml",
        "data-gravity.yaml",
        "workload-identity.yaml",
        "model-routing.yaml",
    ] {
        let config = Config::shipped("envoy.yaml", &BTreeMap::new())
            .and_then(|c| c.with_policy(&read_policy(file)))
            .expect("config");
        let (ok, output) = envoy::validate(&config).expect("validate");
        assert!(ok, "{file}: envoy --mode validate failed:\n{output}");
    }
}

#[test]
fn a_bad_policy_is_rejected_by_envoy_validate_naming_the_rule() {
    let bad = read_policy("eu-residency-cost.yaml").replace(
        "cluster.jurisdiction == 'eu'",
        "cluster.jursidiction == 'eu'",
    );
    let config = Config::shipped("envoy.yaml", &BTreeMap::new())
        .and_then(|c| c.with_policy(&bad))
        .expect("config");
    let (ok, output) = envoy::validate(&config).expect("validate");
    assert!(
        !ok,
        "a policy with a misspelt cluster attribute must not validate:\n{output}"
    );
    assert!(
        output.contains(
            "rule 'eu-residency' (rules[0]): require: no cluster in the inventory has the attribute 'cluster.jursidiction' (did you mean 'jurisdiction'?) at line 1, column 9"
        ),
        "{output}"
    );

    let config = Config::shipped("envoy.yaml", &BTreeMap::new())
        .and_then(|c| {
            c.with_policy(
                "clusters: {aws-us-east-1: {}}\nrules:\n  - {name: r, prefer: [aws-us-east-2]}\n",
            )
        })
        .expect("config");
    let (ok, output) = envoy::validate(&config).expect("validate");
    assert!(!ok);
    assert!(
        output.contains("unknown cluster 'aws-us-east-2' (did you mean 'aws-us-east-1'?)"),
        "{output}"
    );
}

#[test]
fn residency_cost_task_and_deny_route_real_traffic() {
    let s = stack(None);
    let at = s.envoy.listener;
    let base = [("x-tenant", "acme")];

    // Cost: the cheapest cluster overall.
    let r = chat(at, &base).expect("request");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(served_by(&r), "onprem-fra");
    assert_eq!(r.json()["x_celroute"]["cloud"], "onprem-fra");
    let decision = r.header("x-celroute-decision").expect("decision header");
    assert!(
        decision.starts_with("cluster=onprem-fra; rule=cheapest; policy="),
        "{decision}"
    );

    // Latency priority: no cost rule, so the default for US users...
    let latency = [("x-tenant", "acme"), ("x-priority", "latency")];
    let r = chat(at, &latency).expect("request");
    assert_eq!(served_by(&r), "aws-us-east-1");
    // ...but never outside the EU for EU users: the default is excluded.
    let eu = [
        ("x-tenant", "acme"),
        ("x-priority", "latency"),
        ("x-user-region", "eu"),
    ];
    let r = chat(at, &eu).expect("request");
    assert_eq!(served_by(&r), "gcp-europe-west4");
    assert!(r
        .header("x-celroute-decision")
        .unwrap_or("")
        .contains("rule=first-candidate"));

    // Task: reasoning prefers GCP.
    let r = chat(at, &[("x-tenant", "acme"), ("x-task", "reasoning")]).expect("request");
    assert_eq!(served_by(&r), "gcp-europe-west4");

    // Deny: no tenant header.
    let r = chat(at, &[]).expect("request");
    assert_eq!(r.status, 403);
    assert_eq!(r.cloud(), None, "a denied request reaches no cloud");
    let body = r.json();
    assert_eq!(body["error"]["rule"], "block-unknown-tenant", "{}", r.body);
    assert_eq!(body["error"]["message"], "tenant header required");
    assert_eq!(body["error"]["type"], "permission_error");
    assert_eq!(r.header("content-type"), Some("application/json"));

    // A spoofed routing header is never honoured, and never reaches the cloud.
    let spoof = [
        ("x-tenant", "acme"),
        ("x-priority", "latency"),
        ("x-user-region", "eu"),
        ("x-celroute-cluster", "aws-us-east-1"),
    ];
    let r = chat(at, &spoof).expect("request");
    assert_eq!(served_by(&r), "gcp-europe-west4");
    assert_eq!(r.json()["x_celroute"]["routing_header"], "gcp-europe-west4");
    let r = chat(at, &[("x-celroute-cluster", "aws-us-east-1")]).expect("request");
    assert_eq!(r.status, 403, "a spoofed header does not bypass a deny");
}

#[test]
fn compiles_nothing_per_request_and_fetches_only_referenced_attributes() {
    let s = stack(None);
    let compiled_before = s
        .envoy
        .stat("wasmcustom.celroute.programs_compiled")
        .expect("stat");
    let fetches_before = s
        .envoy
        .stat("wasmcustom.celroute.attribute_fetches")
        .expect("stat");
    assert!(
        compiled_before >= 6,
        "the 6 programs of the policy are compiled at load: {compiled_before}"
    );
    let n = 25;
    let mut connection = Connection::open(s.envoy.listener).expect("connect");
    for _ in 0..n {
        let r = connection
            .send("GET", "/v1/models", &[("x-tenant", b"acme")], b"")
            .expect("request");
        assert_eq!(r.status, 200);
    }
    let compiled_after = s
        .envoy
        .stat("wasmcustom.celroute.programs_compiled")
        .expect("stat");
    let fetches_after = s
        .envoy
        .wait_stat("wasmcustom.celroute.attribute_fetches", fetches_before + n)
        .expect("stat");
    // Nothing more arrives with a later flush.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(
        s.envoy
            .stat("wasmcustom.celroute.attribute_fetches")
            .expect("stat"),
        fetches_after
    );
    assert_eq!(
        compiled_after, compiled_before,
        "no CEL program is compiled per request"
    );
    // The policy reads four headers and nothing else: one host call a request
    // brings the header map; no property is asked for.
    assert_eq!(fetches_after - fetches_before, n);
    let stats = s.envoy.stats("celroute").expect("stats");
    assert!(
        stats
            .get("wasmcustom.celroute.decisions.cluster.onprem-fra")
            .copied()
            .unwrap_or(0)
            >= n,
        "{stats:?}"
    );
    assert!(
        stats
            .get("wasmcustom.celroute.decisions.rule.cheapest")
            .copied()
            .unwrap_or(0)
            >= n
    );
    // 25 requests with the same values: one evaluation, then the decision cache.
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    let hits = stat("wasmcustom.celroute.decision_cache.hits");
    let misses = stat("wasmcustom.celroute.decision_cache.misses");
    assert!(misses >= 1 && hits >= n - 1, "{stats:?}");
    let version = celroute::engine::content_version(&read_policy("eu-residency-cost.yaml"));
    let gauge = stats
        .get("wasmcustom.celroute.policy_version")
        .copied()
        .unwrap_or(0);
    assert_eq!(
        format!("{gauge:012x}"),
        version,
        "the gauge names the live policy"
    );
}

#[test]
fn odd_headers_never_break_the_filter() {
    let s = stack(None);
    let mut c = Connection::open(s.envoy.listener).expect("connect");
    // Repeated header: the first value counts.
    let r = c
        .send(
            "GET",
            "/",
            &[
                ("x-tenant", b"a"),
                ("x-user-region", b"us"),
                ("x-user-region", b"eu"),
                ("x-priority", b"latency"),
            ],
            b"",
        )
        .expect("request");
    assert_eq!(served_by(&r), "aws-us-east-1");
    let r = c
        .send(
            "GET",
            "/",
            &[
                ("x-tenant", b"a"),
                ("x-user-region", b"eu"),
                ("x-user-region", b"us"),
                ("x-priority", b"latency"),
            ],
            b"",
        )
        .expect("request");
    assert_eq!(served_by(&r), "gcp-europe-west4");
    // Mixed-case names are the same header.
    let r = c
        .send(
            "GET",
            "/",
            &[
                ("X-Tenant", b"a"),
                ("X-User-Region", b"eu"),
                ("X-Priority", b"latency"),
            ],
            b"",
        )
        .expect("request");
    assert_eq!(served_by(&r), "gcp-europe-west4");
    // Empty value: the tenant header is present.
    let r = c
        .send("GET", "/", &[("x-tenant", b"")], b"")
        .expect("request");
    assert_eq!(served_by(&r), "onprem-fra");
    // Non-ASCII UTF-8 and non-UTF-8 bytes: Envoy's codec may refuse them; the filter must not die.
    let _ = Connection::open(s.envoy.listener)
        .and_then(|mut c| c.send("GET", "/", &[("x-tenant", "zürich-東京".as_bytes())], b""));
    let _ = Connection::open(s.envoy.listener)
        .and_then(|mut c| c.send("GET", "/", &[("x-tenant", &[0xff, 0xfe, 0x80])], b""));
    let long = vec![b'a'; 32 * 1024];
    let _ = Connection::open(s.envoy.listener)
        .and_then(|mut c| c.send("GET", "/", &[("x-task", &long)], b""));
    let r = request(s.envoy.listener, "GET", "/", &[("x-tenant", "after")]).expect("request");
    assert_eq!(
        served_by(&r),
        "onprem-fra",
        "the filter still decides after odd input"
    );
    assert!(
        !s.envoy.log_text().contains("panicked"),
        "{}",
        s.envoy.log_text()
    );
}

#[test]
fn task_specialization_policy() {
    let s = stack(Some("task-specialization.yaml"));
    let at = s.envoy.listener;
    let r = request(at, "POST", "/v1/embeddings", &[]).expect("request");
    assert_eq!(served_by(&r), "onprem-fra");
    let r = chat(at, &[("x-model", "o3-mini")]).expect("request");
    assert_eq!(served_by(&r), "gcp-europe-west4");
    let r = chat(at, &[("x-model", "Qwen2.5-Coder-32B")]).expect("request");
    assert_eq!(served_by(&r), "azure-westeurope");
    let r = chat(at, &[("x-model", "llama-3.1-70b")]).expect("request");
    assert_eq!(
        served_by(&r),
        "gcp-europe-west4",
        "cheapest cluster that serves chat"
    );
    let r = request(at, "GET", "/v1/models", &[]).expect("request");
    assert_eq!(served_by(&r), "aws-us-east-1");
    assert!(r
        .header("x-celroute-decision")
        .unwrap_or("")
        .contains("rule=default"));
}

#[test]
fn active_passive_policy_fails_over_by_fixed_preference() {
    let policy = read_policy("active-passive.yaml");
    let s = stack(Some("active-passive.yaml"));
    let r = request(s.envoy.listener, "GET", "/", &[]).expect("request");
    assert_eq!(served_by(&r), "aws-us-east-1");
    drop(s);

    let primary_down = policy.replace(
        "{role: primary,   available: true}",
        "{role: primary,   available: false}",
    );
    assert_ne!(primary_down, policy);
    let s = stack_with(|c| c.with_policy(&primary_down));
    let r = request(s.envoy.listener, "GET", "/", &[]).expect("request");
    assert_eq!(served_by(&r), "azure-westeurope");
    drop(s);

    let all_down = policy.replace("available: true", "available: false");
    let s = stack_with(|c| c.with_policy(&all_down));
    let r = request(s.envoy.listener, "GET", "/", &[]).expect("request");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["rule"], "only-available");
}

#[test]
fn an_envoy_whose_port_was_taken_starts_on_another() {
    // Hold the listener port the config names, as another test might.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = Config::shipped("envoy.yaml", &BTreeMap::new()).unwrap();
    let taken = held.local_addr().unwrap().port();
    config = config.on_listener_port(taken).unwrap();
    let envoy = envoy::Envoy::start(&config).expect("started on other ports");
    assert_ne!(envoy.listener.port(), taken);
    let reply = request(envoy.admin, "GET", "/ready", &[]).unwrap();
    assert_eq!(reply.status, 200);
}
