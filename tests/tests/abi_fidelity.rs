//! Differential test for policy-host as a proxy-wasm host: the example
//! filter (examples/example-filter) runs in real Envoy and in policy-host,
//! and each exchange must look the same from the client's side: local
//! replies (header case, content-type and length, gRPC-shaped replies),
//! callouts answered or refused, gRPC calls answered, failed or to an
//! unknown cluster, metrics, the VM configuration, and ticks with the time
//! they fired.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use celroute_tests::envoy::{example_wasm, free_port, Config, Envoy};
use celroute_tests::http::{Connection, Reply};
use celroute_tests::start_clouds;
use policy_host::environment::Environment;
use policy_host::request::{Headers, RequestSpec};
use policy_host::run::Script;
use policy_host::upstream::{GrpcReply, GrpcStreamReply, Response};
use policy_host::vm::{FilterModule, Flow, RequestRecord, Vm};

const VM_CONFIGURATION: &str = "vm-config-text";
/// The plugin configuration: the tick period in milliseconds.
const TICK_MS: u64 = 100;

/// Headers the filter or Envoy's local-reply path decide; others (date,
/// server, the upstream's own) are not compared.
const COMPARED: &[&str] = &[
    "content-type",
    "content-length",
    "grpc-status",
    "grpc-message",
    "x-example",
    "x-example-upstream",
    "x-callout-status",
    "x-grpc-call-status",
];

/// What the client sees, reduced to what the filter and host decide.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Seen {
    fn new(status: u16, headers: &[(String, String)], body: String) -> Seen {
        let headers = headers
            .iter()
            .filter(|(k, _)| COMPARED.contains(&k.as_str()))
            // HTTP/1's codec writes `content-length: 0` on an empty reply itself.
            .filter(|(k, v)| !(k == "content-length" && v == "0" && body.is_empty()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Seen {
            status,
            headers,
            body,
        }
    }
}

/// What a gRPC test server answers every unary call.
#[derive(Clone, Copy)]
enum Grpc {
    /// Status 0 with this message.
    Reply(&'static str),
    /// A trailers-only answer: this status and message.
    Fail(u32, &'static str),
    /// A stream: initial metadata `x-meta: m1`, each message received sent
    /// back upper-cased, trailing metadata `x-trailer: t1` and status 0.
    Stream,
}

/// The messages of a gRPC body: 5-byte prefix (flag, big-endian length), message.
fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let end = (5 + len).min(body.len());
        messages.push(body[5..end].to_vec());
        body = &body[end..];
    }
    messages
}

fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// A gRPC server on loopback (HTTP/2 over cleartext) that answers every
/// unary call as `answer` says, on the given runtime.
fn grpc_server(runtime: &tokio::runtime::Runtime, answer: Grpc) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};

    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |request: hyper::Request<Incoming>| async move {
                    // Read the call, then answer it.
                    let sent = match request.into_body().collect().await {
                        Ok(body) => grpc_messages(&body.to_bytes()),
                        Err(_) => Vec::new(),
                    };
                    let mut response = hyper::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc");
                    let body = match answer {
                        Grpc::Stream => {
                            response = response.header("x-meta", "m1");
                            let frames: Vec<u8> = sent
                                .iter()
                                .flat_map(|m| grpc_frame(&m.to_ascii_uppercase()))
                                .collect();
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("x-trailer", "t1".parse().unwrap());
                            Full::new(Bytes::from(frames))
                                .with_trailers(async move { Some(Ok(trailers)) })
                                .boxed()
                        }
                        Grpc::Reply(message) => {
                            let frame = grpc_frame(message.as_bytes());
                            let mut trailers = hyper::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            Full::new(Bytes::from(frame))
                                .with_trailers(async move { Some(Ok(trailers)) })
                                .boxed()
                        }
                        Grpc::Fail(status, message) => {
                            response = response
                                .header("grpc-status", status.to_string())
                                .header("grpc-message", message);
                            Full::new(Bytes::new()).boxed()
                        }
                    };
                    Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                });
            tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    address
}

const GRPC_REPLY: &str = "hello back";
const GRPC_FAILURE: (u32, &str) = (14, "no healthy upstream");

fn envoy_config(
    wasm: &str,
    backend: SocketAddr,
    info: SocketAddr,
    grpc_ok: SocketAddr,
    grpc_down: SocketAddr,
    grpc_stream: SocketAddr,
    silent: SocketAddr,
) -> Config {
    let listener_port = free_port().unwrap();
    let admin_port = free_port().unwrap();
    const HTTP2: &str = r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#;
    let cluster = |name: &str, address: SocketAddr| {
        format!(
            r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}"#,
            port = address.port()
        )
    };
    let text = format!(
        r#"
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  listeners:
  - name: main
    address:
      socket_address: {{address: 127.0.0.1, port_value: {listener_port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/routed"}}
                route: {{cluster_header: x-route-to}}
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
          http_filters:
          - name: example
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: example
                root_id: example
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{TICK_MS}"
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  configuration:
                    "@type": type.googleapis.com/google.protobuf.StringValue
                    value: "{VM_CONFIGURATION}"
                  code:
                    local: {{filename: "{wasm}"}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:{backend}{info}{grpc_ok}{grpc_down}{grpc_stream}{silent}{grpc_silent}
"#,
        backend = cluster("backend", backend),
        info = cluster("info", info),
        grpc_ok = cluster("grpc-ok", grpc_ok) + HTTP2,
        grpc_down = cluster("grpc-down", grpc_down) + HTTP2,
        grpc_stream = cluster("grpc-stream", grpc_stream) + HTTP2,
        silent = cluster("silent", silent),
        grpc_silent = cluster("grpc-silent", silent) + HTTP2,
    );
    Config {
        yaml: serde_yaml::from_str(&text).unwrap(),
        listener_port,
        admin_port,
        ipv6: false,
    }
}

fn send(address: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    Connection::open(address)
        .unwrap()
        .send(method, path, &headers, b"")
        .unwrap_or_else(|e| panic!("{method} {path} through Envoy: {e:#}"))
}

fn spec(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestSpec {
    RequestSpec {
        method: Some(method.into()),
        path: Some(path.into()),
        headers: Headers::List(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..RequestSpec::default()
    }
}

fn through_host(vm: &mut Vm, method: &str, path: &str, headers: &[(&str, &str)]) -> Seen {
    let record = vm.request(&spec(method, path, headers)).unwrap();
    assert!(
        !record.paused,
        "{method} {path} stayed paused in policy-host"
    );
    seen_in_host(&record, &format!("{method} {path}"))
}

/// What the client of policy-host's request sees, checking that the
/// headers are as Envoy holds them.
fn seen_in_host(record: &RequestRecord, what: &str) -> Seen {
    let headers: Vec<(String, String)> = record
        .response_headers
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    // As Envoy holds them: lower-case names, and a header the filter
    // replaced is there once.
    for (name, _) in &headers {
        assert_eq!(*name, name.to_ascii_lowercase(), "{what}: {headers:?}");
        assert_eq!(
            headers.iter().filter(|(k, _)| k == name).count(),
            1,
            "{what}: {name} repeated in {headers:?}"
        );
    }
    Seen::new(
        record.response_code.expect("a response"),
        &headers,
        String::from_utf8_lossy(&record.response_body).into_owned(),
    )
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn the_example_filter_behaves_alike_in_envoy_and_policy_host() {
    let wasm = example_wasm().unwrap();
    let (_runtime, clouds) = start_clouds().unwrap();
    let mut names = clouds.keys();
    let backend = clouds[names.next().unwrap()];
    let info = clouds[names.next().unwrap()];
    // What the clusters answer, read from them directly, is what
    // policy-host's scripted clusters answer.
    let direct = |address: SocketAddr, path: &str| {
        let reply = send(address, "GET", path, &[]);
        let mut response = Response {
            status: reply.status,
            body: reply.body.clone().into_bytes(),
            ..Response::default()
        };
        for name in ["content-type", "content-length"] {
            if let Some(value) = reply.header(name) {
                response
                    .headers
                    .push((name.into(), value.as_bytes().to_vec()));
            }
        }
        response
    };

    let grpc_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let grpc_ok = grpc_server(&grpc_runtime, Grpc::Reply(GRPC_REPLY));
    let grpc_down = grpc_server(&grpc_runtime, Grpc::Fail(GRPC_FAILURE.0, GRPC_FAILURE.1));
    let grpc_stream = grpc_server(&grpc_runtime, Grpc::Stream);
    // A cluster that accepts connections and never answers.
    let silent_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = silent_listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent_listener.incoming() {
            held.push(stream);
        }
    });

    let started = now_nanos();
    let config = envoy_config(
        &wasm.display().to_string(),
        backend,
        info,
        grpc_ok,
        grpc_down,
        grpc_stream,
        silent,
    );
    let envoy = Envoy::start(&config).unwrap();

    let module = FilterModule::load(&wasm).unwrap();
    let environment = Environment::with_virtual_clock(1_800_000_000_000_000_000);
    environment.upstreams.define_clusters([
        "backend",
        "info",
        "grpc-ok",
        "silent",
        "grpc-silent",
        "grpc-down",
        "grpc-stream",
    ]);
    environment.upstreams.answer_grpc_stream(
        "grpc-stream",
        GrpcStreamReply {
            initial_metadata: vec![("x-meta".into(), b"m1".to_vec())],
            messages: vec![b"ONE".to_vec(), b"TWO".to_vec()],
            trailing_metadata: vec![("x-trailer".into(), b"t1".to_vec())],
            ..GrpcStreamReply::default()
        },
    );
    environment.upstreams.answer_grpc_stream(
        "grpc-down",
        GrpcStreamReply {
            status: GRPC_FAILURE.0,
            error_message: GRPC_FAILURE.1.into(),
            ..GrpcStreamReply::default()
        },
    );
    environment.upstreams.answer_grpc(
        "grpc-ok",
        GrpcReply {
            status: 0,
            message: GRPC_REPLY.as_bytes().to_vec(),
            ..GrpcReply::default()
        },
    );
    environment.upstreams.answer_grpc(
        "grpc-down",
        GrpcReply {
            status: GRPC_FAILURE.0,
            error_message: GRPC_FAILURE.1.into(),
            ..GrpcReply::default()
        },
    );
    environment
        .upstreams
        .answer("backend", direct(backend, "/anything"));
    environment.upstreams.answer("info", direct(info, "/info"));
    environment.upstreams.route_by(":authority");
    let mut vm = module
        .start_with(
            &environment,
            VM_CONFIGURATION.as_bytes(),
            TICK_MS.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    // The clock reads the time at VM start, outside any request.
    let start_logs = vm.take_logs();
    assert!(
        start_logs
            .iter()
            .any(|l| l.message == "example-filter: VM started at 1800000000000000000"),
        "{start_logs:?}"
    );

    let grpc = [("content-type", "application/grpc")];
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: Vec<Case> = vec![
        // Local replies: header names lower-cased, text/plain and a length.
        ("GET", "/local/403", &[]),
        ("GET", "/local/503", &[]),
        ("HEAD", "/local/403", &[]),
        // To a gRPC request, a trailers-only gRPC reply mapped from the status.
        ("POST", "/local/503", &grpc),
        ("POST", "/local/403", &grpc),
        // A gRPC-shaped reply: to a plain request, and to a gRPC one.
        ("GET", "/grpc-local/7", &[]),
        ("POST", "/grpc-local/7", &grpc),
        ("POST", "/grpc-local/0", &grpc),
        // A callout answered, and one to a cluster Envoy does not have.
        ("GET", "/callout/info", &[]),
        ("GET", "/callout/nowhere", &[]),
        // gRPC calls: answered, failed, and to a cluster Envoy does not have.
        ("GET", "/grpc-call/grpc-ok", &[]),
        ("GET", "/grpc-call/grpc-down", &[]),
        ("GET", "/grpc-call/nowhere", &[]),
        // gRPC streams: messages both ways, refused by the upstream, and to
        // a cluster Envoy does not have.
        ("GET", "/grpc-stream/grpc-stream", &[]),
        ("GET", "/grpc-stream/grpc-down", &[]),
        ("GET", "/grpc-stream/nowhere", &[]),
        // Passed on to the upstream, with the filter's response header.
        ("GET", "/anything", &[]),
        // Metric operations and what they leave.
        ("GET", "/metric-ops", &[]),
        // A property set, read back, and one never set.
        ("GET", "/property", &[]),
    ];
    let mut differences = Vec::new();
    for (method, path, headers) in &cases {
        let reply = send(envoy.listener, method, path, headers);
        let in_envoy = Seen::new(reply.status, &reply.headers, reply.body.clone());
        // policy-host routes by :authority; Envoy's single route goes to backend.
        let mut with_authority = headers.to_vec();
        with_authority.push(("host", "backend"));
        let in_host = through_host(&mut vm, method, path, &with_authority);
        if in_envoy != in_host {
            differences.push(format!(
                "{method} {path} {headers:?}\n  Envoy:       {in_envoy:?}\n  policy-host: {in_host:?}"
            ));
        }
    }
    // The metrics the requests left: Envoy's stats against policy-host's
    // (once Envoy has logged the last request).
    let counted = vm
        .metrics()
        .into_iter()
        .find(|(name, _)| name == "example_requests")
        .map(|(_, value)| value)
        .expect("the filter counts requests");
    let _ = envoy.wait_stat("wasmcustom.example_requests", counted as u64);
    let stats = envoy.stats("wasmcustom.example").unwrap();
    for (name, value) in vm.metrics() {
        let in_envoy = stats.get(&format!("wasmcustom.{name}")).copied();
        if in_envoy != u64::try_from(value).ok() {
            differences.push(format!(
                "metric {name}: Envoy {in_envoy:?}, policy-host {value} (Envoy's: {stats:?})"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "policy-host differs from Envoy:\n{}",
        differences.join("\n")
    );

    // A callout or gRPC call nobody answers times out: in Envoy on its
    // clock, in policy-host when the virtual clock passes the timeout.
    for path in [
        "/callout/silent?timeout_ms=300",
        "/grpc-call/grpc-silent?timeout_ms=300",
    ] {
        let reply = send(envoy.listener, "GET", path, &[]);
        let in_envoy = Seen::new(reply.status, &reply.headers, reply.body.clone());
        vm.begin(&spec("GET", path, &[])).unwrap();
        assert_eq!(vm.request_headers(true).unwrap(), Flow::Paused);
        vm.advance(Duration::from_millis(299)).unwrap();
        assert_eq!(
            vm.flow(),
            Flow::Paused,
            "{path}: not timed out before 300 ms"
        );
        vm.advance(Duration::from_millis(1)).unwrap();
        assert_eq!(vm.flow(), Flow::Replied, "{path}: timed out at 300 ms");
        let in_host = seen_in_host(&vm.finish().unwrap(), path);
        assert_eq!(in_envoy, in_host, "{path}");
    }

    // A filter that resets the stream: the client gets no response.
    let in_envoy = Connection::open(envoy.listener)
        .unwrap()
        .send("GET", "/reset", &[], b"");
    assert!(
        in_envoy.is_err(),
        "Envoy answered a reset stream: {in_envoy:?}"
    );
    let record = vm.request(&spec("GET", "/reset", &[])).unwrap();
    assert!(record.reset);
    assert_eq!(record.response_code, None);
    assert_eq!(record.upstream_cluster, None);

    // A route by request header to a cluster Envoy lacks, or to none:
    // Envoy's router answers as `policy-host run` does.
    let script = Script::parse(
        "route: {cluster_header: x-route-to}\nclusters: {backend: {}}\nsteps:\n  - request: {path: /routed, headers: {x-route-to: nowhere}}\n  - request: {path: /routed}\n  - request: {path: /routed, headers: {x-route-to: backend}}\n",
    )
    .unwrap();
    let outcome = script.run(&module, Some(Vec::new()), None).unwrap();
    let routed: [&[(&str, &str)]; 3] = [
        &[("x-route-to", "nowhere")],
        &[],
        &[("x-route-to", "backend")],
    ];
    for (i, headers) in routed.iter().enumerate() {
        let reply = send(envoy.listener, "GET", "/routed", headers);
        let report = &outcome.steps[i]["response"];
        assert_eq!(report["status"], reply.status, "{headers:?}: {report}");
        if reply.status != 200 {
            assert_eq!(report["body"], reply.body.as_str(), "{headers:?}");
        }
    }

    // Ticks: Envoy's timer on the real clock, policy-host's on the virtual one.
    std::thread::sleep(Duration::from_millis(TICK_MS * 4));
    let reply = send(envoy.listener, "GET", "/ticks", &[]);
    let ticks: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let asked = now_nanos();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as u128;
    assert!(n(&ticks["ticks"]) >= 2, "Envoy ticked: {ticks}");
    assert!(
        (started..=asked).contains(&n(&ticks["last_tick_nanos"])),
        "Envoy's last tick is between its start and now: {ticks}"
    );
    assert!(
        (n(&ticks["last_tick_nanos"])..=asked).contains(&n(&ticks["now_nanos"])),
        "Envoy's time now: {ticks}"
    );
    assert_eq!(ticks["vm_configuration"], VM_CONFIGURATION);
    let start_log = envoy
        .log_text()
        .lines()
        .find_map(|l| l.split("VM started at ").nth(1).map(str::to_string))
        .expect("Envoy's log shows the VM start");
    assert!(
        (started..=asked).contains(&start_log.trim().parse::<u128>().unwrap()),
        "the clock reads the time at VM start in Envoy: {start_log}"
    );

    let t0 = environment.clock.now_nanos();
    assert_eq!(vm.advance(Duration::from_millis(350)).unwrap(), 3);
    let record = vm.request(&spec("GET", "/ticks", &[])).unwrap();
    let ticks: serde_json::Value = serde_json::from_slice(&record.response_body).unwrap();
    // Three ticks while each call timed out, three since.
    assert_eq!(ticks["ticks"], 9, "{ticks}");
    assert_eq!(
        n(&ticks["last_tick_nanos"]),
        u128::from(t0) + 300_000_000,
        "{ticks}"
    );
    assert_eq!(n(&ticks["now_nanos"]), u128::from(t0) + 350_000_000);
    assert_eq!(ticks["vm_configuration"], VM_CONFIGURATION);
}
