//! Live signals natively: aggregation, staleness, the breaker, and the two
//! parsers, then a policy deciding under the snapshots they make.

use cel::Value;

use super::*;
use crate::engine::testing::TestHost;
use crate::engine::{LiveOptions, Outcome, Policy, Router};

fn done(failed: bool, latency_ms: Option<f64>, at: u64) -> Completion {
    Completion {
        failed,
        latency_ms,
        at,
    }
}

fn merged(pending: &mut Pending, state: &mut ClusterState) {
    for (_, p) in pending.take() {
        state.merge(&p, 10_000);
    }
}

#[test]
fn averages_follow_recent_samples_and_restart_when_stale() {
    let mut pending = Pending::default();
    let mut state = ClusterState::default();
    for i in 0..10 {
        pending.started("aws");
        pending.finished("aws", done(false, Some(20.0), 1_000 + i));
    }
    merged(&mut pending, &mut state);
    assert_eq!(state.latency_ms.map(|t| t.value), Some(20.0));
    assert_eq!(state.in_flight, 0);
    // Ten slow samples move the average most of the way (weight 1 - 0.8^10).
    for _ in 0..10 {
        pending.finished("aws", done(false, Some(300.0), 2_000));
    }
    merged(&mut pending, &mut state);
    let latency = state.latency_ms.map_or(0.0, |t| t.value);
    assert!((260.0..300.0).contains(&latency), "{latency}");
    // After more than stale_after without samples, one sample is the average.
    pending.finished("aws", done(false, Some(15.0), 20_000));
    merged(&mut pending, &mut state);
    assert_eq!(
        state.latency_ms.map(|t| (t.value, t.at)),
        Some((15.0, 20_000))
    );
}

#[test]
fn consecutive_failures_span_batches_and_a_success_resets_them() {
    let mut pending = Pending::default();
    let mut state = ClusterState::default();
    for at in 1..=3 {
        pending.finished("aws", done(true, None, at));
    }
    merged(&mut pending, &mut state);
    pending.finished("aws", done(true, None, 4));
    pending.finished("aws", done(true, None, 5));
    merged(&mut pending, &mut state);
    assert_eq!((state.consecutive_failures, state.last_failure_at), (5, 5));
    assert_eq!(
        state.latency_ms, None,
        "failures without an answer carry no latency"
    );
    pending.finished("aws", done(true, None, 6));
    pending.finished("aws", done(false, Some(10.0), 7));
    pending.finished("aws", done(true, None, 8));
    merged(&mut pending, &mut state);
    assert_eq!(state.consecutive_failures, 1);
    let rate = state.error_rate.map_or(0.0, |t| t.value);
    assert!(rate > 0.5 && rate < 1.0, "{rate}");
}

#[test]
fn the_breaker_opens_cools_down_and_reopens_on_the_next_failure() {
    let options = LiveOptions::default();
    let mut state = ClusterState {
        consecutive_failures: 4,
        last_failure_at: 1_000,
        ..ClusterState::default()
    };
    let breaker = |s: &ClusterState, now| snapshot::Breaker::of(s, &options, now).name();
    assert_eq!(breaker(&state, 1_000), "closed");
    state.consecutive_failures = 5;
    assert_eq!(breaker(&state, 1_000), "open");
    assert_eq!(breaker(&state, 5_999), "open");
    assert_eq!(breaker(&state, 6_000), "half_open");
    // The probe fails: open again for a whole cool-down.
    let mut pending = Pending::default();
    pending.finished("aws", done(true, None, 6_100));
    merged(&mut pending, &mut state);
    assert_eq!(breaker(&state, 6_200), "open");
    assert_eq!(breaker(&state, 11_100), "half_open");
    // The probe succeeds: closed.
    pending.finished("aws", done(false, Some(5.0), 11_200));
    merged(&mut pending, &mut state);
    assert_eq!(breaker(&state, 11_300), "closed");
}

#[test]
fn stale_values_are_absent_and_counts_never_are() {
    let options = LiveOptions {
        stale_after_ms: 2_000,
        ..LiveOptions::default()
    };
    let mut state = ClusterState::default();
    state.report("price_per_1k_tokens", Signal::Number(0.4), 1_000);
    state.report("price_per_1k_tokens", Signal::Number(0.9), 500); // older: ignored
    state.latency_ms = Some(state::Timed {
        value: 30.0,
        at: 1_000,
    });
    let at = |now| snapshot([("aws", &state)], &options, now);
    let fresh = at(3_000);
    let live = &fresh.clusters["aws"];
    assert_eq!(live.get("price_per_1k_tokens"), Some(&Value::Float(0.4)));
    assert_eq!(live.get("latency_ms"), Some(&Value::Float(30.0)));
    let stale = at(3_001);
    let live = &stale.clusters["aws"];
    assert_eq!(live.get("price_per_1k_tokens"), None);
    assert_eq!(live.get("latency_ms"), None);
    assert_eq!(live.get("healthy"), Some(&Value::Bool(true)));
    assert_eq!(live.get("in_flight"), Some(&Value::Int(0)));
}

#[test]
fn a_record_that_does_not_parse_starts_fresh() {
    assert_eq!(
        ClusterState::from_bytes(Some(b"{not json")),
        ClusterState::default()
    );
    assert_eq!(
        ClusterState::from_bytes(Some(br#"{"version":2,"consecutive_failures":9}"#)),
        ClusterState::default()
    );
    let mut state = ClusterState::default();
    state.report("queue_depth", Signal::Number(3.0), 7);
    assert_eq!(ClusterState::from_bytes(Some(&state.to_bytes())), state);
}

#[test]
fn orca_reports_in_text_and_json() {
    let text = parse_orca(
        "TEXT named_metrics.kv_cache_usage_perc=0.5, named_metrics.num_requests_waiting=12, cpu_utilization=0.25, rps_fractional=3",
    );
    assert_eq!(
        text,
        vec![
            ("kv_cache_usage".to_string(), Signal::Number(0.5)),
            ("queue_depth".to_string(), Signal::Number(12.0)),
            ("cpu_utilization".to_string(), Signal::Number(0.25)),
        ]
    );
    let json = parse_orca(
        r#"JSON {"cpu_utilization": 0.1, "named_metrics": {"num_requests_waiting": 4, "Bad Name": 1}}"#,
    );
    assert_eq!(
        json,
        vec![
            ("cpu_utilization".to_string(), Signal::Number(0.1)),
            ("queue_depth".to_string(), Signal::Number(4.0)),
        ]
    );
    for garbage in [
        "",
        "BIN AAAA",
        "TEXT =,=,",
        "JSON [1]",
        "TEXT named_metrics.x=NaN",
    ] {
        assert_eq!(parse_orca(garbage), vec![], "{garbage}");
    }
}

#[test]
fn the_feed_is_taken_whole_or_not_at_all() {
    let good = parse_feed(br#"{"version": 1, "clusters": {"aws": {"price_per_1k_tokens": 0.5, "maintenance": false, "tier": "gold"}}}"#);
    assert_eq!(
        good,
        Ok(vec![
            ("aws".into(), "maintenance".into(), Signal::Bool(false)),
            (
                "aws".into(),
                "price_per_1k_tokens".into(),
                Signal::Number(0.5)
            ),
            ("aws".into(), "tier".into(), Signal::Text("gold".into())),
        ])
    );
    for (bad, says) in [
        (&b"<html>"[..], "not JSON"),
        (br#"[1]"#, "not a JSON object"),
        (br#"{"clusters": {}}"#, "no \"version\""),
        (br#"{"version": 2, "clusters": {}}"#, "version 2"),
        (br#"{"version": 1}"#, "no \"clusters\""),
        (
            br#"{"version": 1, "clusters": {}, "extra": 1}"#,
            "unknown key \"extra\"",
        ),
        (
            br#"{"version": 1, "clusters": {"aws": 3}}"#,
            "clusters.aws is not an object",
        ),
        (
            br#"{"version": 1, "clusters": {"aws": {"Price": 1}}}"#,
            "not a field name",
        ),
        (
            br#"{"version": 1, "clusters": {"aws": {"p": [1]}}}"#,
            "not a number, boolean or string",
        ),
    ] {
        match parse_feed(bad) {
            Ok(v) => panic!("{} accepted: {v:?}", String::from_utf8_lossy(bad)),
            Err(e) => assert!(e.0.contains(says), "{}: {e}", String::from_utf8_lossy(bad)),
        }
    }
}

/// The breaker, from observations to a routing decision: the primary is
/// left while its breaker is open, and used again once it closes.
#[test]
fn observations_move_traffic_through_a_policy() {
    let policy = Policy::load(
        "clusters:\n  primary: {}\n  backup: {}\nrules:\n  - name: healthy\n    require: cluster.live.healthy\n  - name: order\n    prefer: [primary, backup]\nlive: {breaker: {consecutive_failures: 3, cool_down: 2s}}\n",
    );
    let router = match policy {
        Ok(p) => Router::new(p),
        Err(e) => panic!("{e}"),
    };
    let mut pending = Pending::default();
    let mut states = std::collections::BTreeMap::<String, ClusterState>::new();
    let mut decide_at = |pending: &mut Pending, now: u64| {
        for (cluster, p) in pending.take() {
            states.entry(cluster).or_default().merge(&p, 10_000);
        }
        let mut all: Vec<(&str, &ClusterState)> =
            states.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let empty = ClusterState::default();
        for name in ["primary", "backup"] {
            if !states.contains_key(name) {
                all.push((name, &empty));
            }
        }
        router.set_live(&snapshot(all, router.policy().live_options(), now));
        match &router
            .decide(&mut TestHost::with_headers(&[]), false)
            .0
            .outcome
        {
            Outcome::Route { cluster } => cluster.clone(),
            Outcome::Deny { status, .. } => format!("deny {status}"),
        }
    };
    assert_eq!(decide_at(&mut pending, 0), "primary");
    for at in 1..=3 {
        pending.finished("primary", done(true, None, at));
    }
    assert_eq!(decide_at(&mut pending, 10), "backup");
    assert_eq!(
        decide_at(&mut pending, 2_003),
        "backup",
        "half-open after the cool-down: no traffic until a probe answers"
    );
    pending.probed("primary", false, 2_010);
    assert_eq!(
        decide_at(&mut pending, 4_009),
        "backup",
        "a failed probe opens it again"
    );
    pending.probed("primary", true, 4_020);
    assert_eq!(
        decide_at(&mut pending, 4_030),
        "primary",
        "a probe that succeeds closes it"
    );
}

#[test]
fn scraped_metrics_sum_queues_and_take_the_largest_share() {
    let wanted = crate::engine::default_scrape_metrics();
    let text = r#"# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama-70b",engine="0"} 12.0
vllm:num_requests_waiting{model_name="qwen",weird="a}b \"c\""} 3
vllm:gpu_cache_usage_perc{model_name="llama-70b"} 0.91
vllm:gpu_cache_usage_perc{model_name="qwen"} 0.40 1732300000000
sglang:num_queue_reqs 99
vllm:num_requests_running{model_name="llama-70b"} 7
garbage line here
vllm:num_requests_waiting{broken 5
"#;
    assert_eq!(
        parse_metrics(text, &wanted),
        vec![
            ("queue_depth".to_string(), Signal::Number(15.0)),
            ("kv_cache_usage".to_string(), Signal::Number(0.91)),
        ]
    );
    // SGLang's names when vLLM's are absent.
    assert_eq!(
        parse_metrics("sglang:num_queue_reqs 4\nsglang:token_usage 0.5\n", &wanted),
        vec![
            ("queue_depth".to_string(), Signal::Number(4.0)),
            ("kv_cache_usage".to_string(), Signal::Number(0.5)),
        ]
    );
    assert_eq!(parse_metrics("<html>502</html>", &wanted), vec![]);
    assert_eq!(
        parse_metrics("vllm:num_requests_waiting NaN\n", &wanted),
        vec![]
    );
}

#[test]
fn scrape_options_are_checked_at_load() {
    let base = "clusters:\n  onprem: {}\n  cloud: {}\n";
    let ok = Policy::load(&format!(
        "{base}live: {{scrape: {{clusters: [onprem], every: 200ms}}}}\n"
    ));
    match ok {
        Ok(p) => {
            let scrape = p
                .live_options()
                .scrape
                .clone()
                .map(|s| (s.clusters, s.every_ms, s.path));
            assert_eq!(
                scrape,
                Some((vec!["onprem".to_string()], 200, "/metrics".to_string()))
            );
        }
        Err(e) => panic!("{e}"),
    }
    for (bad, says) in [
        (
            "{scrape: {clusters: [onprm]}}",
            "unknown cluster 'onprm' (did you mean 'onprem'?)",
        ),
        ("{scrape: {clusters: []}}", "lists no cluster"),
        (
            "{scrape: {clusters: [onprem], metrics: {healthy: [up]}}}",
            "not a live field a scrape may set",
        ),
        (
            "{scrape: {clusters: [onprem], metrics: {queue_depth: ['bad name']}}}",
            "Prometheus metric names",
        ),
    ] {
        match Policy::load(&format!("{base}live: {bad}\n")) {
            Ok(_) => panic!("{bad} should be rejected"),
            Err(e) => assert!(e.to_string().contains(says), "{bad}: {e}"),
        }
    }
}
