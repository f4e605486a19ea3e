//! The two rules that keep live cluster state from going stale in a
//! decision, held with live fields of the tests' own (no live source exists
//! in this build): an expression that reads live state is never evaluated at
//! load, and a cached decision is never served under a newer snapshot.

use cel::Value;

use super::live::Reads;
use super::policy::Action;
use super::testing::TestHost;
use super::*;

/// The live fields these tests compile with.
fn live_fields() -> LiveFields {
    LiveFields::of(["healthy", "latency_ms", "queue_depth"])
}

fn load_live(text: &str) -> Result<Policy, PolicyErrors> {
    let document = PolicyDocument::parse(text)?;
    Policy::compile_with_live(document, "test", live_fields())
}

fn router(text: &str) -> Router {
    match load_live(text) {
        Ok(p) => Router::new(p),
        Err(e) => panic!("policy should load: {e}"),
    }
}

fn rejection(text: &str) -> String {
    match load_live(text) {
        Ok(_) => panic!("policy should be rejected"),
        Err(e) => e.to_string(),
    }
}

fn outcome(router: &Router, headers: &[(&str, &str)]) -> (String, Served) {
    let (decision, served) = router.decide(&mut TestHost::with_headers(headers), false);
    let shown = match &decision.outcome {
        Outcome::Route { cluster } => cluster.clone(),
        Outcome::Deny { status, .. } => format!("deny {status}"),
    };
    (shown, served)
}

fn health(aws: bool, gcp: bool) -> LiveSnapshot {
    LiveSnapshot::new()
        .set("aws", "healthy", Value::Bool(aws))
        .set("gcp", "healthy", Value::Bool(gcp))
}

const HEALTHY_IN_EU: &str = r#"
clusters:
  aws: {region: eu}
  gcp: {region: eu}
  far: {region: us}
rules:
  - name: eu
    require: cluster.region == 'eu'
  - name: healthy
    require: cluster.live.healthy
"#;

/// What each compiled `require` reads, and whether it was evaluated at load.
fn requires(policy: &Policy) -> Vec<(Reads, bool)> {
    policy
        .rules
        .iter()
        .filter_map(|r| match &r.action {
            Action::Require(e) => Some((e.reads, e.per_cluster.is_some())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_require_on_a_live_field_follows_each_snapshot() {
    let router = router(HEALTHY_IN_EU);
    assert_eq!(
        requires(router.policy()),
        [(Reads::Inventory, true), (Reads::Live, false)],
        "the inventory-only require is evaluated at load, the live one is not"
    );
    // Before any snapshot every live value is absent: the require fails
    // closed on every cluster.
    assert_eq!(outcome(&router, &[]).0, "deny 451");
    router.set_live(&health(true, false));
    assert_eq!(outcome(&router, &[]).0, "aws");
    router.set_live(&health(false, true));
    assert_eq!(outcome(&router, &[]).0, "gcp");
    // A cluster the residency rule excluded never comes back through a live value.
    router.set_live(&health(false, false).set("far", "healthy", Value::Bool(true)));
    assert_eq!(outcome(&router, &[]).0, "deny 451");
}

#[test]
fn a_cached_decision_is_never_served_under_a_newer_snapshot() {
    let router = router(
        r#"
clusters:
  aws: {region: eu}
  gcp: {region: eu}
rules:
  - name: fastest
    when: request.headers[?'x-tier'].orValue('') == 'fast'
    order_by: cluster.live.latency_ms
default: gcp
"#,
    );
    assert!(router.policy().decision_cache_size() > 0);
    let fast = [("x-tier", "fast")];
    router.set_live(
        &LiveSnapshot::new()
            .set("aws", "latency_ms", Value::Int(10))
            .set("gcp", "latency_ms", Value::Int(50)),
    );
    assert_eq!(outcome(&router, &fast), ("aws".into(), Served::Missed));
    assert_eq!(outcome(&router, &fast), ("aws".into(), Served::FromCache));
    router.set_live(
        &LiveSnapshot::new()
            .set("aws", "latency_ms", Value::Int(90))
            .set("gcp", "latency_ms", Value::Int(20)),
    );
    assert_eq!(router.live_epoch(), 2);
    assert_eq!(outcome(&router, &fast), ("gcp".into(), Served::Missed));
    assert_eq!(outcome(&router, &fast), ("gcp".into(), Served::FromCache));
}

#[test]
fn an_absent_live_value_is_not_there_for_has() {
    let router = router(
        r#"
clusters:
  aws: {}
  gcp: {}
rules:
  - name: not-saturated
    require: "!has(cluster.live.queue_depth) || cluster.live.queue_depth < 10"
"#,
    );
    router.set_live(&LiveSnapshot::new().set("aws", "queue_depth", Value::Int(50)));
    assert_eq!(outcome(&router, &[]).0, "gcp");
}

#[test]
fn what_an_expression_reads() {
    let cases = [
        ("cluster.region == 'eu'", Reads::Inventory, false),
        ("cluster.live.healthy", Reads::Live, true),
        (
            "has(cluster.live.healthy) && cluster.region == 'eu'",
            Reads::Live,
            true,
        ),
        (
            "request.headers[?'x'].orValue('') == 'a' && cluster.live.healthy",
            Reads::Request,
            true,
        ),
        ("clusters.exists(c, c.live.healthy)", Reads::Live, true),
        // A whole cluster value carries its live state.
        (
            "clusters['aws'].region == cluster.region",
            Reads::Live,
            true,
        ),
        ("cluster.live == {}", Reads::Live, true),
    ];
    for (source, reads, live) in cases {
        let text = format!(
            "clusters:\n  aws: {{region: eu}}\nrules:\n  - name: r\n    require: {source:?}\n"
        );
        let policy = match load_live(&text) {
            Ok(p) => p,
            Err(e) => panic!("{source}: {e}"),
        };
        let Action::Require(e) = &policy.rules[0].action else {
            panic!("a require")
        };
        assert_eq!((e.reads, e.reads_live), (reads, live), "{source}");
        assert_eq!(
            e.per_cluster.is_some(),
            reads == Reads::Inventory,
            "{source}"
        );
    }
    // Without live fields nothing reads live state, and `clusters[...]` is
    // inventory again.
    let text = "clusters:\n  aws: {region: eu}\nrules:\n  - name: r\n    require: \"clusters['aws'].region == cluster.region\"\n";
    let policy = match Policy::load(text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let Action::Require(e) = &policy.rules[0].action else {
        panic!("a require")
    };
    assert_eq!((e.reads, e.reads_live), (Reads::Inventory, false));
}

#[test]
fn live_fields_are_checked_at_load() {
    let unknown = rejection(
        "clusters:\n  aws: {}\nrules:\n  - name: r\n    require: cluster.live.latncy_ms < 100\n",
    );
    assert!(
        unknown
            .contains("unknown live field 'cluster.live.latncy_ms' (did you mean 'latency_ms'?)"),
        "{unknown}"
    );
    let in_when = rejection(
        "clusters:\n  aws: {}\nrules:\n  - name: r\n    when: cluster.live.healthy\n    require: 'true'\n",
    );
    assert!(in_when.contains("not in when"), "{in_when}");
    let reserved = rejection("clusters:\n  aws: {live: true}\n");
    assert!(
        reserved.contains("clusters.aws.live: 'live' holds the cluster's live state"),
        "{reserved}"
    );
    // This build has no live source: `cluster.live` is unknown to policies.
    let none = match Policy::load(
        "clusters:\n  aws: {}\nrules:\n  - name: r\n    require: cluster.live.healthy\n",
    ) {
        Ok(_) => panic!("cluster.live without live fields should be rejected"),
        Err(e) => e.to_string(),
    };
    assert!(
        none.contains("no cluster in the inventory has the attribute 'cluster.live'"),
        "{none}"
    );
}

#[test]
fn a_policy_without_live_reads_ignores_snapshots() {
    let router = router("clusters:\n  aws: {}\n  gcp: {}\ndefault: gcp\n");
    router.set_live(&health(true, true));
    assert_eq!(router.live_epoch(), 0);
    assert_eq!(outcome(&router, &[]), ("gcp".into(), Served::Missed));
    assert_eq!(outcome(&router, &[]), ("gcp".into(), Served::FromCache));
}
