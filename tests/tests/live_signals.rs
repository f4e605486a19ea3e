//! Live signals end to end: real Envoy 1.40 running `celroute.wasm` with
//! `envoy/envoy-live.yaml`, simulated clouds whose faults and load change
//! under bounded load, and a simulated signals feed, all on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::thread::sleep;
use std::time::Duration;

use celroute_tests::clouds::now_ms;
use celroute_tests::live::{residency_held, shares, timeline, without_retries, LiveStack, EU};
use celroute_tests::load::{self, between, share};
use celroute_tests::read_policy;
use policy_host::publish::{ecds_resource, write_atomically};

struct Failover {
    /// From the kill to the last request sent to the dead cloud.
    last_sent_ms: u64,
    failed: usize,
    requests: usize,
}

/// Kills the primary (azure) under load, then brings it back.
fn kill_under_load(retries: bool) -> Failover {
    let policy = read_policy("failover.yaml")
        .unwrap()
        .replace("cool_down: 5s", "cool_down: 1s");
    let stack = LiveStack::start(
        &policy,
        |c| if retries { Ok(c) } else { without_retries(c) },
    );
    let azure = stack.cloud("azure-westeurope").control.clone();
    let kill_at = std::thread::scope(|s| {
        let load = s.spawn(|| stack.load(3.0));
        sleep(Duration::from_millis(1000));
        let at = now_ms();
        azure.set_down(true);
        let samples = load.join().unwrap();
        (at, samples)
    });
    let (kill_at, samples) = kill_at;
    residency_held(&samples);
    let before = between(&samples, 0, kill_at);
    assert!(
        share(&before, "azure-westeurope") > 0.95,
        "azure is the primary while healthy"
    );
    let last_sent_ms = azure
        .last_refused_ms
        .load(std::sync::atomic::Ordering::SeqCst)
        .saturating_sub(kill_at);
    let after = between(&samples, kill_at + 1000, u64::MAX);
    assert!(
        share(&after, "gcp-europe-west4") > 0.95,
        "gcp takes over:\n{}\n{}",
        timeline(&samples, kill_at),
        stack
            .envoy
            .stats("azure-westeurope.upstream")
            .unwrap_or_default()
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let failed = samples.iter().filter(|s| s.status != 200).count();
    // The cloud comes back: after the cool-down a probe closes its breaker.
    azure.set_down(false);
    sleep(Duration::from_millis(1500));
    let back = stack.load(1.0);
    residency_held(&back);
    assert!(
        share(&back, "azure-westeurope") > 0.9,
        "traffic returns to the primary"
    );
    stack.assert_no_panic();
    Failover {
        last_sent_ms,
        failed,
        requests: samples.len(),
    }
}

#[test]
fn a_cloud_killed_under_load_loses_its_traffic_in_under_a_second() {
    let with = kill_under_load(true);
    let without = kill_under_load(false);
    println!(
        "failover, retries on: last request to the dead cloud {} ms after the kill, {} of {} requests failed",
        with.last_sent_ms, with.failed, with.requests
    );
    println!(
        "failover, retries off: last request to the dead cloud {} ms after the kill, {} of {} requests failed",
        without.last_sent_ms, without.failed, without.requests
    );
    assert!(with.last_sent_ms < 1000 && without.last_sent_ms < 1000);
    assert_eq!(with.failed, 0, "with retries every request lands");
    assert!(
        without.failed > 0,
        "without retries the requests in flight fail"
    );
}

#[test]
fn a_slow_cloud_loses_its_traffic_and_regains_it_after_recovery() {
    let stack = LiveStack::start(&read_policy("lowest-latency.yaml").unwrap(), Ok);
    let azure = stack.cloud("azure-westeurope").control.clone();
    let warm = stack.load(1.0);
    residency_held(&warm);
    azure.set_delay_ms(300);
    let slow_at = now_ms();
    let slow = stack.load(3.0);
    residency_held(&slow);
    let settled = between(&slow, slow_at + 2000, u64::MAX);
    assert!(
        share(&settled, "gcp-europe-west4") > 0.9,
        "2 s after azure slowed to 300 ms, gcp serves most traffic: {}",
        shares(&settled)
    );
    // Azure recovers and gcp slows to 100 ms. Azure's last measurement
    // (about 300 ms) goes stale (3 s), azure is measured again, and from then
    // on it wins: had its old measurement stayed, gcp (100 ms) would keep
    // the traffic.
    azure.set_delay_ms(0);
    stack.cloud("gcp-europe-west4").control.set_delay_ms(100);
    let recovered = stack.load(6.0);
    let late = between(&recovered, now_ms() - 2000, u64::MAX);
    assert!(
        share(&late, "azure-westeurope") > 0.8,
        "azure regains the traffic after it recovers: {}",
        shares(&late)
    );
    assert!(slow.iter().chain(&recovered).all(|s| s.status == 200));
    stack.assert_no_panic();
}

#[test]
fn onprem_queue_over_its_threshold_bursts_to_the_cloud_and_back() {
    let stack = LiveStack::start(&read_policy("hybrid-burst.yaml").unwrap(), Ok);
    let onprem = stack.cloud("onprem-fra").control.clone();
    onprem.set_load_report(Some(
        "TEXT named_metrics.num_requests_waiting=3, named_metrics.kv_cache_usage_perc=0.4",
    ));
    let calm = stack.load(1.0);
    assert!(
        share(&calm, "onprem-fra") > 0.95,
        "on-premises first: {}",
        shares(&calm)
    );
    onprem.set_load_report(Some("TEXT named_metrics.num_requests_waiting=40"));
    let saturated_at = now_ms();
    let busy = stack.load(1.5);
    let burst = between(&busy, saturated_at + 500, u64::MAX);
    assert!(
        share(&burst, "gcp-europe-west4") > 0.7,
        "a queue of 40 sends new requests to the cloud: {}",
        shares(&burst)
    );
    onprem.set_load_report(Some("TEXT named_metrics.num_requests_waiting=0"));
    let drained = stack.load(3.5);
    let back = between(&drained, now_ms() - 1000, u64::MAX);
    assert!(
        share(&back, "onprem-fra") > 0.9,
        "drained: back on-premises: {}",
        shares(&back)
    );
    // The load report never reaches the client.
    let reply = celroute_tests::http::request(stack.address(), "GET", "/v1/models", &EU).unwrap();
    assert_eq!(reply.header("endpoint-load-metrics"), None);
    residency_held(&[calm, busy, drained].concat());
    stack.assert_no_panic();
}

#[test]
fn a_price_change_in_the_feed_moves_traffic_and_a_broken_feed_changes_nothing() {
    let policy = read_policy("cheapest-live.yaml").unwrap();
    let stack = LiveStack::start(&policy, Ok);
    let feed = &stack.feed;
    feed.set_prices(&[
        ("gcp-europe-west4", 0.30),
        ("azure-westeurope", 0.40),
        ("onprem-fra", 0.90),
    ]);
    sleep(Duration::from_millis(800));
    let before = stack.load(0.5);
    assert!(
        share(&before, "gcp-europe-west4") > 0.95,
        "{}",
        shares(&before)
    );
    // Azure halves its price: within one poll (500 ms) and one tick (100 ms).
    feed.set_prices(&[
        ("gcp-europe-west4", 0.30),
        ("azure-westeurope", 0.20),
        ("onprem-fra", 0.90),
    ]);
    let changed_at = now_ms();
    let after = stack.load(1.5);
    let moved = between(&after, changed_at + 600, u64::MAX);
    assert!(
        share(&moved, "azure-westeurope") > 0.95,
        "{}",
        shares(&moved)
    );
    let first_azure = after
        .iter()
        .find(|s| s.cloud.as_deref() == Some("azure-westeurope"))
        .map_or(u64::MAX, |s| s.at_ms - changed_at);
    println!("price change to traffic moved: {first_azure} ms (poll 500 ms, tick 100 ms)");
    // Garbage, then an outage: the last good prices hold until stale (5 s)...
    feed.set(200, "{\"version\": 1, \"clusters\": {\"azure-westeurope\": {\"price_per_1k_tokens\": \"free\"}}}");
    let garbage = stack.load(1.0);
    assert!(
        share(&garbage, "azure-westeurope") > 0.95,
        "{}",
        shares(&garbage)
    );
    feed.set_down(true);
    let held = stack.load(1.0);
    assert!(share(&held, "azure-westeurope") > 0.95, "{}", shares(&held));
    // ...then the inventory's list prices decide: gcp (0.45) over azure (0.48).
    sleep(Duration::from_millis(3500));
    let stale = stack.load(1.0);
    assert!(
        share(&stale, "gcp-europe-west4") > 0.95,
        "{}",
        shares(&stale)
    );
    let all = [before, after, garbage, held, stale].concat();
    assert!(all.iter().all(|s| s.status == 200), "no request failed");
    residency_held(&all);
    let log = stack.envoy.log_text();
    assert!(
        log.contains("signals feed rejected, keeping the last good values"),
        "{log}"
    );
    stack.assert_no_panic();
}

#[test]
fn a_hot_reload_under_load_keeps_the_observed_state() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = celroute_tests::envoy::wasm().unwrap();
    let publish = |version: &str, policy: &str| {
        let resource = ecds_resource("celroute", &wasm, policy, version);
        write_atomically(&dir.path().join("celroute.yaml"), resource.as_bytes()).unwrap();
    };
    // A breaker that stays open for the whole test once it opens.
    let policy = read_policy("failover.yaml")
        .unwrap()
        .replace("cool_down: 5s", "cool_down: 60s");
    publish("1", &policy);
    let stack = LiveStack::start_from("envoy-ecds.yaml", |c| c.with_ecds_dir(dir.path()));
    let azure = stack.cloud("azure-westeurope").control.clone();
    azure.set_down(true);
    let opened = stack.load(1.0);
    assert!(
        opened.iter().any(|s| s.status != 200),
        "azure's failures open its breaker"
    );
    let refused = azure.refused.load(std::sync::atomic::Ordering::SeqCst);
    // Two reloads under load: a new policy version, then the old one again.
    let reloads = std::thread::scope(|s| {
        let load = s.spawn(|| stack.load(2.0));
        sleep(Duration::from_millis(500));
        publish("2", &policy.replace("name: failover", "name: failover-v2"));
        sleep(Duration::from_millis(700));
        publish("3", &policy);
        load.join().unwrap()
    });
    assert_eq!(
        azure.refused.load(std::sync::atomic::Ordering::SeqCst),
        refused,
        "after the reloads, no request went to the cloud whose breaker is open"
    );
    assert!(
        reloads.iter().all(|s| s.status == 200),
        "{}",
        shares(&reloads)
    );
    assert!(
        share(&reloads, "gcp-europe-west4") > 0.99,
        "{}",
        shares(&reloads)
    );
    let log = stack.envoy.log_text();
    assert!(log.contains("loaded policy 'failover-v2'"), "{log}");
    residency_held(&[opened, reloads].concat());
    stack.assert_no_panic();
}

#[test]
fn a_weighted_split_follows_its_weights_and_keeps_sessions_together() {
    let stack = LiveStack::start(&read_policy("weighted-split.yaml").unwrap(), Ok);
    let samples = load::run(
        stack.address(),
        4,
        Duration::from_millis(1500),
        Duration::from_millis(2),
        &[("x-user-region", "us")],
    );
    assert!(samples.len() > 500, "{}", samples.len());
    for (cloud, weight) in [
        ("aws-us-east-1", 0.5),
        ("gcp-europe-west4", 0.3),
        ("azure-westeurope", 0.2),
    ] {
        let got = share(&samples, cloud);
        assert!(
            (got - weight).abs() < 0.07,
            "{cloud}: {got} for weight {weight}: {}",
            shares(&samples)
        );
    }
    let mut connection = celroute_tests::http::Connection::open(stack.address()).unwrap();
    let mut clouds_seen = std::collections::BTreeSet::new();
    for session in 0..30 {
        let id = format!("session-{session}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5 {
            let reply = connection
                .send("GET", "/v1/models", &[("x-session-id", id.as_bytes())], b"")
                .unwrap();
            seen.insert(reply.cloud().unwrap_or("none").to_string());
        }
        assert_eq!(seen.len(), 1, "{id} stays on one cloud: {seen:?}");
        clouds_seen.extend(seen);
    }
    assert!(clouds_seen.len() >= 2, "sessions spread: {clouds_seen:?}");
    stack.assert_no_panic();
}

#[test]
fn a_scraped_queue_moves_traffic_without_waiting_for_it_to_go_stale() {
    // hybrid-burst.yaml, reading the on-premises queue from its /metrics.
    let policy = read_policy("hybrid-burst.yaml").unwrap().replace(
        "live:\n  stale_after: 2s\n",
        "live:\n  stale_after: 2s\n  scrape: {clusters: [onprem-fra], every: 200ms}\n",
    );
    assert!(policy.contains("scrape:"));
    let stack = LiveStack::start(&policy, Ok);
    let onprem = stack.cloud("onprem-fra").control.clone();
    let calm = stack.load(1.0);
    assert!(share(&calm, "onprem-fra") > 0.95, "{}", shares(&calm));
    onprem
        .queue_depth
        .store(40, std::sync::atomic::Ordering::SeqCst);
    let saturated_at = now_ms();
    let busy = stack.load(4.0);
    // Scraped every 200 ms, the queue stays known while on-premises gets no
    // traffic: no return to it every time a report would have gone stale.
    let burst = between(&busy, saturated_at + 500, u64::MAX);
    assert!(share(&burst, "onprem-fra") < 0.01, "{}", shares(&burst));
    onprem
        .queue_depth
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let drained_at = now_ms();
    let drained = stack.load(1.0);
    let back = between(&drained, drained_at + 500, u64::MAX);
    assert!(share(&back, "onprem-fra") > 0.95, "{}", shares(&back));
    residency_held(&[calm, busy, drained].concat());
    stack.assert_no_panic();
}
