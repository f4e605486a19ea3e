//! Weighted splits: shares follow the weights, a stickiness key keeps its
//! cluster, and when a cluster leaves only its keys move.

use std::collections::BTreeMap;

use super::testing::TestHost;
use super::*;

const SPLIT: &str = r#"
clusters:
  aws: {jurisdiction: us, weight: 70}
  gcp: {jurisdiction: eu, weight: 30}
  azure: {jurisdiction: eu, weight: 0}
rules:
  - name: eu-residency
    when: request.headers[?'x-user-region'].orValue('') == 'eu'
    require: cluster.jurisdiction == 'eu'
  - name: not-drained
    when: "'x-drain' in request.headers"
    require: cluster.name != request.headers['x-drain']
  - name: split
    split: cluster.weight
    sticky_by: request.headers[?'x-session'].orValue(request.id)
"#;

fn policy(text: &str) -> Policy {
    match Policy::load(text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// The cluster for a request with these headers; `x-request-id` is the
/// request's `request.id`, as Envoy derives it.
fn cluster_for(policy: &Policy, headers: &[(&str, &str)]) -> String {
    let id = headers
        .iter()
        .find(|(k, _)| *k == "x-request-id")
        .map_or("none", |(_, v)| v);
    let mut host = TestHost::with_headers(headers).property("request.id", id.as_bytes());
    let decision = policy.decide(&mut host, false);
    match decision.outcome {
        Outcome::Route { cluster } => cluster,
        other => panic!("{other:?}: {:?}", decision.errors),
    }
}

#[test]
fn shares_follow_the_weights() {
    let p = policy(SPLIT);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..10_000 {
        let id = format!("00000000-0000-4000-8000-{i:012x}");
        *counts
            .entry(cluster_for(&p, &[("x-request-id", &id)]))
            .or_default() += 1;
    }
    let aws = f64::from(counts["aws"]) / 10_000.0;
    assert!((0.67..0.73).contains(&aws), "{counts:?}");
    assert_eq!(counts.get("azure"), None, "a weight of 0 gets nothing");
    // Residency first: EU sessions never reach aws, whatever its weight.
    for i in 0..200 {
        let s = format!("session-{i}");
        let headers = [("x-session", s.as_str()), ("x-user-region", "eu")];
        assert_eq!(cluster_for(&p, &headers), "gcp");
    }
}

#[test]
fn a_session_stays_put_and_only_a_leaving_clusters_sessions_move() {
    let p = policy(&SPLIT.replace("weight: 0}", "weight: 50}"));
    let sessions: Vec<String> = (0..2_000).map(|i| format!("session-{i}")).collect();
    let before: Vec<String> = sessions
        .iter()
        .map(|s| cluster_for(&p, &[("x-session", s), ("x-request-id", "a")]))
        .collect();
    for (s, was) in sessions.iter().zip(&before) {
        assert_eq!(
            &cluster_for(&p, &[("x-session", s), ("x-request-id", "b")]),
            was
        );
    }
    let after: Vec<String> = sessions
        .iter()
        .map(|s| cluster_for(&p, &[("x-session", s), ("x-drain", "gcp")]))
        .collect();
    let mut moved = 0;
    for (was, now) in before.iter().zip(&after) {
        if was == "gcp" {
            assert_ne!(now, "gcp");
            moved += 1;
        } else {
            assert_eq!(was, now, "a session on a cluster that stays does not move");
        }
    }
    assert!(moved > 300, "{moved}");
}

#[test]
fn split_errors_are_reported_where_they_are() {
    let rejected = |text: &str| match Policy::load(text) {
        Ok(_) => panic!("should be rejected: {text}"),
        Err(e) => e.to_string(),
    };
    let base = "clusters:\n  a: {w: 1}\nrules:\n";
    let e = rejected(&format!(
        "{base}  - name: s\n    split: cluster.w\n    order_by: cluster.w\n"
    ));
    assert!(
        e.contains("exactly one of require, deny, prefer, order_by, split"),
        "{e}"
    );
    let e = rejected(&format!(
        "{base}  - name: s\n    prefer: [a]\n    sticky_by: request.id\n"
    ));
    assert!(e.contains("sticky_by only goes with split"), "{e}");
    let e = rejected(&format!(
        "{base}  - name: s\n    split: cluster.w\n    sticky_by: cluster.w\n"
    ));
    assert!(e.contains("sticky_by"), "{e}");
    // A key that is not a string skips the rule: the default decides.
    let p = policy(&format!("{base}  - name: s\n    split: cluster.w\n    sticky_by: \"request.headers[?'x-n'].orValue('1') == '1' ? 'k' : 3\"\ndefault: a\n"));
    let d = p.decide(&mut TestHost::with_headers(&[("x-n", "2")]), true);
    assert_eq!(d.rule, "default");
    assert!(
        d.errors
            .iter()
            .any(|e| e.contains("not a string; rule skipped")),
        "{:?}",
        d.errors
    );
}
