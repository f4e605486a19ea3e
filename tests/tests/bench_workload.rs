//! The benchmark compares like with like: its Lua filter and its celroute
//! policy, each in real Envoy, decide every request of the load mix (and the
//! denied ones) identically, and the mix exercises several clusters and rules.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use celroute_tests::bench::{
    denied_requests, policy_yaml, routed_requests, CHAT_BODY, SSE_COMPLETION,
};
use celroute_tests::bench_envoy::{
    envoy_config, probe, same_decisions, upstream_config, Filter, Variant,
};
use celroute_tests::envoy::{wasm, Envoy};
use celroute_tests::http::Connection;

fn wasm_dir() -> std::path::PathBuf {
    wasm()
        .expect("celroute.wasm")
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Envoy with the benchmark's 20-rule celroute policy (cache on) in `variant`.
fn celroute_envoy(variant: Variant, upstream_port: u16) -> Envoy {
    let filter = Filter::Celroute {
        rules: 20,
        cache: true,
        variant,
    };
    Envoy::start(&envoy_config(&filter, upstream_port, &wasm_dir()).unwrap())
        .unwrap_or_else(|e| panic!("celroute Envoy ({variant:?}): {e:#}"))
}

#[test]
fn lua_and_celroute_benchmark_filters_decide_alike() {
    let wasm_dir = wasm_dir();
    let upstream = Envoy::start(&upstream_config().unwrap()).expect("upstream");
    let port = upstream.listener.port();
    let lua = Envoy::start(&envoy_config(&Filter::Lua { rules: 20 }, port, &wasm_dir).unwrap())
        .expect("Lua Envoy");
    let cel = celroute_envoy(Variant::Live, port);

    // The benchmark's plain celroute configuration decides alike too.
    let plain = celroute_envoy(Variant::Plain, port);
    let logged = celroute_envoy(Variant::DecisionLog, port);

    let mut requests = routed_requests(64);
    requests.extend(denied_requests());
    // Twice: the second pass is answered from celroute's decision cache.
    for _ in 0..2 {
        let n = same_decisions(("lua", &lua), ("celroute, live", &cel), &requests).unwrap();
        assert_eq!(n, requests.len());
        let n = same_decisions(("lua", &lua), ("celroute", &plain), &requests).unwrap();
        assert_eq!(n, requests.len());
        let n = same_decisions(("lua", &lua), ("celroute, log", &logged), &requests).unwrap();
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

/// The inference workloads of `make bench-envoy` do what they are named
/// for: the body route is decided by the model in the body, and the
/// streamed route's usage is counted.
#[test]
fn the_body_and_stream_workloads_are_decided_and_counted() {
    let upstream = Envoy::start(&upstream_config().unwrap()).expect("upstream");
    let port = upstream.listener.port();
    let start = |variant| celroute_envoy(variant, port);
    let headers: Vec<(String, String)> = routed_requests(1)[0].clone();
    let mut with_type: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    with_type.push(("content-type", b"application/json"));

    let body_model = start(Variant::BodyModel);
    let reply = Connection::open(body_model.listener)
        .unwrap()
        .send("POST", "/v1/direct/chat", &with_type, CHAT_BODY.as_bytes())
        .unwrap();
    assert_eq!(
        reply.header("x-chosen"),
        Some("cluster-1"),
        "{}",
        reply.body
    );
    // Without a reasoning model in the body, the rest of the policy decides.
    let other = CHAT_BODY.replace("o3-mini", "llama-3.1-70b");
    let reply = Connection::open(body_model.listener)
        .unwrap()
        .send("POST", "/v1/direct/chat", &with_type, other.as_bytes())
        .unwrap();
    assert_ne!(
        reply.header("x-chosen"),
        Some("cluster-1"),
        "{}",
        reply.body
    );

    let usage = start(Variant::Usage);
    let mut connection = Connection::open(usage.listener).unwrap();
    for _ in 0..10 {
        let reply = connection
            .send(
                "POST",
                "/v1/proxied/stream",
                &with_type,
                CHAT_BODY.as_bytes(),
            )
            .unwrap();
        assert_eq!(reply.body, SSE_COMPLETION);
    }
    let counted = (usage
        .stats("usage.completion_tokens.cluster")
        .unwrap()
        .values())
    .sum::<u64>();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut counted = counted;
    while counted < 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        counted = (usage
            .stats("usage.completion_tokens.cluster")
            .unwrap()
            .values())
        .sum();
    }
    assert_eq!(counted, 20, "2 completion tokens in each of 10 streams");
}

/// The benchmark's rival design decides alike: Envoy's ext_proc filter
/// asking `celroute-ext-proc` (the engine outside the proxy, over gRPC)
/// answers every request of the mix as the in-proxy filter does, routed
/// requests reach the upstream through the chosen cluster, and the
/// processor made each decision.
#[test]
fn the_ext_proc_processor_decides_like_the_filter() {
    use std::sync::atomic::Ordering;

    let wasm_dir = wasm_dir();
    let processor = celroute_ext_proc::Processor::new(&policy_yaml(20, None)).unwrap();
    let decisions = processor.decisions();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            processor.serve(listener).await.unwrap();
        });
    });

    let upstream = Envoy::start(&upstream_config().unwrap()).expect("upstream");
    let upstream_port = upstream.listener.port();
    let ext = Envoy::start(
        &envoy_config(
            &Filter::ExtProc { rules: 20, port },
            upstream_port,
            &wasm_dir,
        )
        .unwrap(),
    )
    .expect("Envoy with ext_proc");
    let cel = celroute_envoy(Variant::Plain, upstream_port);

    let mut requests = routed_requests(64);
    requests.extend(denied_requests());
    let n = same_decisions(("ext_proc", &ext), ("celroute", &cel), &requests).unwrap();
    assert_eq!(n, requests.len());
    assert_eq!(
        decisions.load(Ordering::Relaxed),
        requests.len() as u64,
        "the processor decided every request"
    );

    // Denials come back as the filter's local reply, with its JSON body.
    let (status, _, body) = probe(&ext, "/v1/direct/chat", &denied_requests()[0]).unwrap();
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "policy_denied", "{body}");
    // A client's own routing header never picks the cluster.
    let honest = probe(&ext, "/v1/direct/chat", &routed_requests(1)[0]).unwrap();
    let other = if honest.1 == "cluster-0" {
        "cluster-1"
    } else {
        "cluster-0"
    };
    let mut spoofed = routed_requests(1)[0].clone();
    spoofed.push(("x-celroute-cluster".into(), other.into()));
    assert_eq!(probe(&ext, "/v1/direct/chat", &spoofed).unwrap(), honest);
    let (status, _, body) = probe(&ext, "/v1/proxied/chat", &routed_requests(1)[0]).unwrap();
    assert_eq!((status, body.as_str()), (200, Some("upstream ok")));
}
