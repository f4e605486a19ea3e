//! The benchmark compares like with like: its Lua filter and its celroute
//! policy, each in real Envoy, decide every request of the load mix (and the
//! denied ones) identically, and the mix exercises several clusters and rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use celroute_tests::bench::{denied_requests, routed_requests};
use celroute_tests::bench_envoy::{envoy_config, probe, same_decisions, upstream_config, Filter};
use celroute_tests::envoy::{wasm, Envoy};

#[test]
fn lua_and_celroute_benchmark_filters_decide_alike() {
    let wasm_dir = wasm()
        .expect("celroute.wasm")
        .parent()
        .unwrap()
        .to_path_buf();
    let upstream = Envoy::start(&upstream_config().unwrap()).expect("upstream");
    let port = upstream.listener.port();
    let lua = Envoy::start(&envoy_config(&Filter::Lua { rules: 20 }, port, &wasm_dir).unwrap())
        .expect("Lua Envoy");
    let cel = Envoy::start(
        &envoy_config(
            &Filter::Celroute {
                rules: 20,
                cache: true,
                live: true,
            },
            port,
            &wasm_dir,
        )
        .unwrap(),
    )
    .expect("celroute Envoy");

    // The benchmark's plain celroute configuration decides alike too.
    let plain = Envoy::start(
        &envoy_config(
            &Filter::Celroute {
                rules: 20,
                cache: true,
                live: false,
            },
            port,
            &wasm_dir,
        )
        .unwrap(),
    )
    .expect("celroute Envoy without live state");

    let mut requests = routed_requests(64);
    requests.extend(denied_requests());
    // Twice: the second pass is answered from celroute's decision cache.
    for _ in 0..2 {
        let n = same_decisions(("lua", &lua), ("celroute, live", &cel), &requests).unwrap();
        assert_eq!(n, requests.len());
        let n = same_decisions(("lua", &lua), ("celroute", &plain), &requests).unwrap();
        assert_eq!(n, requests.len());
    }

    let mut clusters = BTreeSet::new();
    for headers in routed_requests(64) {
        let (status, cluster, _) = probe(&cel, "/v1/direct/chat", &headers).unwrap();
        assert_eq!(status, 200, "{headers:?}");
        clusters.insert(cluster);
    }
    assert!(
        clusters.len() >= 3,
        "the mix reaches several clusters: {clusters:?}"
    );
    let mut denials = 0;
    for headers in denied_requests() {
        let (status, _, body) = probe(&cel, "/v1/direct/chat", &headers).unwrap();
        if status == 403 {
            denials += 1;
            assert_eq!(body["error"]["code"], "policy_denied", "{body}");
        }
    }
    assert!(denials >= 3, "tenant-required and blocked tenants deny");

    // The proxied route reaches the upstream through the chosen cluster.
    let (status, _, body) = probe(&cel, "/v1/proxied/chat", &routed_requests(1)[0]).unwrap();
    assert_eq!((status, body.as_str()), (200, Some("upstream ok")));
}
