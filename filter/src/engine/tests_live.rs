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
    Policy::compile_with_live(document, "test", Some(live_fields()))
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
    let document = match PolicyDocument::parse(text) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let policy = match Policy::compile_with_live(document, "test", Some(LiveFields::none())) {
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
    // A policy reads the built-in fields and the named values it declares.
    let declared = "clusters:\n  aws: {}\nrules:\n  - name: r\n    require: cluster.live.healthy && cluster.live.carbon < 300.0\nlive:\n  fields: [carbon]\n";
    match Policy::load(declared) {
        Ok(policy) => assert!(policy.reads_live()),
        Err(e) => panic!("{e}"),
    }
    let undeclared = match Policy::load(&declared.replace("  fields: [carbon]\n", "  fields: []\n"))
    {
        Ok(_) => panic!("an undeclared named value should be rejected"),
        Err(e) => e.to_string(),
    };
    assert!(
        undeclared.contains("unknown live field 'cluster.live.carbon'"),
        "{undeclared}"
    );
    for (bad, says) in [
        ("live: {fields: [healthy]}", "is a built-in live field"),
        ("live: {fields: [Bad-Name]}", "is not a field name"),
        ("live: {stale_after: 5 s}", "is not a duration"),
        ("live: {stale_after: 10ms}", "is not from 100 ms"),
        (
            "live: {breaker: {consecutive_failures: 0}}",
            "is not from 1 to 1000",
        ),
        (
            "live: {feed: {cluster: aws}}",
            "must name the Envoy cluster that serves the feed",
        ),
        (
            "live: {feed: {cluster: signals, path: x}}",
            "is not a request path",
        ),
        (
            "live: {feed: {cluster: signals, every: 1h}}",
            "is not a duration",
        ),
    ] {
        let text = format!("clusters:\n  aws: {{}}\n{bad}\n");
        let message = match Policy::load(&text) {
            Ok(_) => panic!("{bad} should be rejected"),
            Err(e) => e.to_string(),
        };
        assert!(message.contains(says), "{bad}: {message}");
    }
}

#[test]
fn a_policy_without_live_reads_ignores_snapshots() {
    let router = router("clusters:\n  aws: {}\n  gcp: {}\ndefault: gcp\n");
    router.set_live(&health(true, true));
    assert_eq!(router.live_epoch(), 0);
    assert_eq!(outcome(&router, &[]), ("gcp".into(), Served::Missed));
    assert_eq!(outcome(&router, &[]), ("gcp".into(), Served::FromCache));
}

#[test]
fn a_snapshot_that_changes_nothing_the_policy_reads_keeps_the_cache() {
    let cached = router(HEALTHY_IN_EU);
    cached.set_live(&health(true, true));
    let epoch = cached.live_epoch();
    assert_eq!(outcome(&cached, &[]), ("aws".into(), Served::Missed));
    // The same values, and a change in a field the policy does not read.
    cached.set_live(&health(true, true));
    cached.set_live(&health(true, true).set("aws", "latency_ms", Value::Float(900.0)));
    assert_eq!(cached.live_epoch(), epoch);
    assert_eq!(outcome(&cached, &[]), ("aws".into(), Served::FromCache));
    // A change in what it reads is a new epoch.
    cached.set_live(&health(false, true));
    assert_eq!(cached.live_epoch(), epoch + 1);
    assert_eq!(outcome(&cached, &[]), ("gcp".into(), Served::Missed));
    // A policy that reads the whole live map sees every field change.
    let whole =
        router("clusters:\n  aws: {}\nrules:\n  - name: r\n    require: size(cluster.live) >= 0\n");
    whole.set_live(&health(true, true));
    let before = whole.live_epoch();
    whole.set_live(&health(true, true).set("aws", "latency_ms", Value::Float(1.0)));
    assert_eq!(whole.live_epoch(), before + 1);
}

#[test]
fn a_live_number_is_given_only_for_a_field_the_policy_reads() {
    let r = router(
        "clusters: {aws: {}, gcp: {}}\nrules:\n  - name: short\n    order_by: 'has(cluster.live.queue_depth) ? cluster.live.queue_depth : 0'\n",
    );
    assert_eq!(r.live_number("aws", "queue_depth"), None, "no snapshot yet");
    r.set_live(
        &LiveSnapshot::new()
            .set("aws", "queue_depth", Value::Int(7))
            .set("gcp", "latency_ms", Value::Float(12.5)),
    );
    assert_eq!(r.live_number("aws", "queue_depth"), Some(7.0));
    assert_eq!(r.live_number("gcp", "queue_depth"), None, "absent for gcp");
    assert_eq!(
        r.live_number("gcp", "latency_ms"),
        None,
        "not read by the policy"
    );
    assert_eq!(
        r.live_number("azure", "queue_depth"),
        None,
        "not in the inventory"
    );
}
