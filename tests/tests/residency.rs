//! Residency, as a property: random valid policies and requests, each
//! decided by the engine and checked against an oracle written from the
//! documented semantics (`celroute_tests::scenarios`). A routed request is
//! always inside every applicable constraint, and every decision (cluster or
//! denial, and the deciding rule) is the documented one. A sample goes
//! through the real `celroute.wasm` in policy-host.
//!
//! Seeds are reproducible: `CELROUTE_SCENARIO_SEED=N` reruns one run; a
//! failure prints the seed and the smallest policy and request that fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use celroute::engine::testing::TestHost;
use celroute::engine::{Decision, Outcome, Policy, Router};
use celroute::signals::{snapshot, ClusterState, Signal};
use celroute_tests::envoy::wasm;
use celroute_tests::scenarios::{Expected, Rng, Scenario};
use policy_host::policy::LoadedPolicy;
use policy_host::request::{Headers, RequestSpec};
use policy_host::scripted;
use policy_host::vm::FilterModule;

/// Policies per run, and requests decided with each.
const POLICIES: usize = 10_000;
const REQUESTS_PER_POLICY: usize = 10;

fn seed() -> u64 {
    std::env::var("CELROUTE_SCENARIO_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee)
}

fn as_expected(decision: &Decision) -> Expected {
    match &decision.outcome {
        Outcome::Route { cluster } => Expected::Route {
            cluster: cluster.clone(),
            rule: decision.rule.clone(),
            fallback: decision.fallback.clone(),
        },
        Outcome::Deny { status, .. } => Expected::Deny {
            status: *status,
            rule: decision.rule.clone(),
        },
    }
}

/// A router for the scenario's policy, under its clusters' live health.
fn router(scenario: &Scenario) -> Router {
    let policy = match Policy::load(&scenario.policy()) {
        Ok(p) => p,
        Err(e) => panic!("a generated policy must load: {e}\n{}", scenario.policy()),
    };
    let router = Router::new(policy);
    let states: Vec<(String, ClusterState)> = scenario
        .health()
        .into_iter()
        .map(|(name, healthy)| {
            let mut state = ClusterState::default();
            let _ = state.set_field("healthy", Signal::Bool(healthy), NOW);
            (name, state)
        })
        .collect();
    let snapshot = snapshot(
        states.iter().map(|(n, s)| (n.as_str(), s)),
        router.policy().live_options(),
        NOW,
    );
    router.set_live(&snapshot);
    router
}

/// The time the live states are set and read at (ms since the epoch).
const NOW: u64 = 1_767_225_600_000;

fn native(scenario: &Scenario) -> Expected {
    decide(&router(scenario), scenario)
}

fn decide(router: &Router, scenario: &Scenario) -> Expected {
    let headers: Vec<(&str, &str)> = scenario
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    as_expected(
        &router
            .decide(&mut TestHost::with_headers(&headers), false)
            .0,
    )
}

/// Checks one decision; on failure, shrinks the scenario with `decide_again`.
fn check(
    seed: u64,
    scenario: &Scenario,
    got: &Expected,
    decide_again: impl Fn(&Scenario) -> Expected,
) {
    let expected = scenario.expected();
    let allowed = |name: &String| {
        scenario
            .allowed()
            .iter()
            .any(|&c| scenario.clusters[c].name == *name)
    };
    // The cluster, and the fallback a retry goes to, are both allowed.
    let inside = match got {
        Expected::Route {
            cluster, fallback, ..
        } => allowed(cluster) && fallback.iter().all(|f| allowed(f) && f != cluster),
        Expected::Deny { .. } => true,
    };
    if *got == expected && inside {
        return;
    }
    let fails = |s: &Scenario| {
        let got = decide_again(s);
        got != s.expected()
    };
    let small = scenario.shrink(fails);
    panic!(
        "seed {seed}: decision differs from the documented semantics{}\npolicy:\n{}request headers: {:?}\nexpected: {:?}\ngot:      {:?}",
        if inside { "" } else { " AND routed outside a constraint" },
        small.policy(),
        small.headers,
        small.expected(),
        decide_again(&small)
    );
}

#[test]
fn every_decision_is_the_documented_one_and_stays_inside_its_constraints() {
    let seed = seed();
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let (mut routed, mut denied, mut no_candidate) = (0, 0, 0);
    for _ in 0..POLICIES {
        let mut scenario = Scenario::generate(&mut rng);
        let router = router(&scenario);
        for _ in 0..REQUESTS_PER_POLICY {
            scenario.headers = Scenario::request(&mut rng);
            let got = decide(&router, &scenario);
            match &got {
                Expected::Route { .. } => routed += 1,
                Expected::Deny { status: 451, .. } => no_candidate += 1,
                Expected::Deny { .. } => denied += 1,
            }
            check(seed, &scenario, &got, native);
        }
    }
    let total = POLICIES * REQUESTS_PER_POLICY;
    eprintln!(
        "{total} scenarios ({POLICIES} policies) in {:.1} s: {routed} routed, {denied} denied by a rule, {no_candidate} left without a candidate",
        started.elapsed().as_secs_f64()
    );
    // The generator reaches every kind of outcome.
    assert!(routed > total / 10 && denied > total / 100 && no_candidate > total / 100);
}

#[test]
fn a_sample_decides_the_same_in_the_real_filter() {
    let seed = seed() ^ 0x5eed;
    let mut rng = Rng::new(seed);
    let module = FilterModule::load(&wasm().unwrap()).unwrap();
    let spec = |scenario: &Scenario| RequestSpec {
        headers: Headers::List(scenario.headers.clone()),
        ..RequestSpec::default()
    };
    // The policy in the filter, its clusters' health set as live state.
    let load = |scenario: &Scenario| {
        let mut loaded = LoadedPolicy::load_in(
            &module,
            scenario.policy().as_bytes(),
            scripted::environment(),
        )
        .unwrap_or_else(|e| panic!("a generated policy loads: {e}\n{}", scenario.policy()));
        let live = scenario
            .health()
            .into_iter()
            .map(|(name, healthy)| {
                (
                    name,
                    [("healthy".to_string(), serde_json::Value::Bool(healthy))].into(),
                )
            })
            .collect();
        scripted::set_live(&mut loaded, &live).unwrap();
        loaded
    };
    let through_filter = |scenario: &Scenario| {
        as_expected(&load(scenario).evaluate(&spec(scenario)).unwrap().decision)
    };
    for _ in 0..100 {
        let mut scenario = Scenario::generate(&mut rng);
        let mut loaded = load(&scenario);
        for _ in 0..3 {
            scenario.headers = Scenario::request(&mut rng);
            let got = as_expected(&loaded.evaluate(&spec(&scenario)).unwrap().decision);
            check(seed, &scenario, &got, through_filter);
        }
    }
}

#[test]
fn the_oracle_sees_a_wrong_decision() {
    // A check that cannot fail proves nothing: a decision the semantics do
    // not give is caught, and shrunk to the rule that matters.
    let mut rng = Rng::new(7);
    let scenario = loop {
        let s = Scenario::generate(&mut rng);
        if matches!(s.expected(), Expected::Route { .. }) && s.rules.len() > 2 {
            break s;
        }
    };
    let wrong = |_: &Scenario| Expected::Deny {
        status: 403,
        rule: "nobody".into(),
    };
    let result = std::panic::catch_unwind(|| check(7, &scenario, &wrong(&scenario), wrong));
    let message = match result {
        Ok(()) => panic!("a wrong decision passed the check"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(message.contains("seed 7"), "{message}");
    // Shrunk: no rule was needed to show it.
    assert!(!message.contains("rules:"), "{message}");
}
