//! The request lifecycle step by step, for any proxy-wasm filter: callouts
//! answered through the API, gRPC calls, bodies in chunks, trailers, HEAD
//! requests, given properties, clocks outside requests and the root
//! context's shutdown. The example filter (examples/example-filter, built
//! by `make wasm`) and small hand-written guests are the subjects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use policy_host::environment::Environment;
use policy_host::request::RequestSpec;
use policy_host::upstream::{GrpcReply, GrpcStreamReply, Response};
use policy_host::vm::{FilterModule, Flow, Vm};

mod common;
use common::guest;

fn example() -> FilterModule {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip1/release/example_filter.wasm");
    FilterModule::load(&path).unwrap_or_else(|e| {
        panic!("{e:#}: build it with `make wasm`");
    })
}

fn start(module: &FilterModule, environment: &Environment) -> Vm {
    module
        .start_in(environment, b"")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn get(path: &str) -> RequestSpec {
    RequestSpec {
        path: Some(path.into()),
        ..RequestSpec::default()
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

#[test]
fn a_callout_answered_through_the_api_resumes_the_request() {
    let module = example();
    let environment = Environment::default();
    let mut vm = start(&module, &environment);
    let body = vm.begin(&get("/callout/info")).unwrap();
    assert!(body.is_empty());
    assert_eq!(vm.request_headers(true).unwrap(), Flow::Paused);
    let call = vm.http_calls().last().cloned().expect("a callout");
    assert_eq!(call.upstream, "info");
    assert_eq!(header(&call.headers, ":path"), Some("/info"));
    assert_eq!(call.timeout_ms, 5000);
    assert!(
        !vm.answer_http_call(call.token + 100, None).unwrap(),
        "an unknown token is not answered"
    );
    let reply = Response {
        status: 201,
        body: b"from info".to_vec(),
        ..Response::default()
    };
    assert!(vm.answer_http_call(call.token, Some(&reply)).unwrap());
    assert_eq!(vm.flow(), Flow::Replied);
    assert!(
        !vm.answer_http_call(call.token, Some(&reply)).unwrap(),
        "a callout is answered once"
    );
    let record = vm.finish().unwrap();
    assert_eq!(record.response_code, Some(200));
    assert_eq!(
        header(&record.response_headers, "x-callout-status"),
        Some("201")
    );
    assert_eq!(record.response_body, b"from info");
    assert_eq!(record.http_calls.len(), 1);
    assert!(record.http_calls[0].answered);
}

#[test]
fn a_failed_callout_arrives_without_headers_or_body() {
    let module = example();
    let mut vm = start(&module, &Environment::default());
    vm.begin(&get("/callout/info")).unwrap();
    vm.request_headers(true).unwrap();
    let token = vm.http_calls().last().unwrap().token;
    assert!(vm.answer_http_call(token, None).unwrap());
    let record = vm.finish().unwrap();
    assert_eq!(
        header(&record.response_headers, "x-callout-status"),
        Some("")
    );
    assert!(record.response_body.is_empty());
}

#[test]
fn callouts_to_clusters_envoy_lacks_are_refused_with_envoy_s_statuses() {
    let module = example();
    let environment = Environment::default();
    environment.upstreams.define_clusters(["info"]);
    let mut vm = start(&module, &environment);
    let record = vm.request(&get("/callout/nowhere")).unwrap();
    assert_eq!(record.response_code, Some(500));
    assert_eq!(
        record.response_body,
        b"callout to nowhere refused: BadArgument\n"
    );
    let record = vm.request(&get("/grpc-call/nowhere")).unwrap();
    assert_eq!(
        record.response_body,
        b"gRPC call to nowhere refused: ParseFailure\n"
    );
    // A defined cluster is called.
    let record = vm.request(&get("/callout/info")).unwrap();
    assert!(record.paused, "waits for the callout's answer");
    assert_eq!(record.http_calls.len(), 1);
}

#[test]
fn a_grpc_call_gets_its_message_or_its_failure() {
    let module = example();
    let environment = Environment::default();
    environment.upstreams.define_clusters(["echo", "down"]);
    environment.upstreams.answer_grpc(
        "echo",
        GrpcReply {
            status: 0,
            message: b"hello back".to_vec(),
            ..GrpcReply::default()
        },
    );
    environment.upstreams.answer_grpc(
        "down",
        GrpcReply {
            status: 14,
            error_message: "no healthy upstream".into(),
            ..GrpcReply::default()
        },
    );
    let mut vm = start(&module, &environment);
    let record = vm.request(&get("/grpc-call/echo")).unwrap();
    let call = &record.grpc_calls[0];
    assert_eq!(
        (
            call.service.as_str(),
            call.method.as_str(),
            call.message.as_slice()
        ),
        ("example.Echo", "Say", b"hello".as_slice())
    );
    assert_eq!(
        header(&record.response_headers, "x-grpc-call-status"),
        Some("0")
    );
    assert_eq!(record.response_body, b"hello back");

    let record = vm.request(&get("/grpc-call/down")).unwrap();
    assert_eq!(
        header(&record.response_headers, "x-grpc-call-status"),
        Some("14")
    );
    assert_eq!(record.response_body, b"no healthy upstream{via_upstream}");

    // Unscripted: the call waits, and the API can answer it.
    environment.upstreams.define_clusters(["quiet"]);
    vm.begin(&get("/grpc-call/quiet")).unwrap();
    assert_eq!(vm.request_headers(true).unwrap(), Flow::Paused);
    let token = vm.grpc_calls().last().unwrap().token;
    let reply = GrpcReply {
        status: 0,
        message: b"late".to_vec(),
        ..GrpcReply::default()
    };
    assert!(vm.answer_grpc_call(token, &reply).unwrap());
    assert!(
        !vm.answer_grpc_call(token, &reply).unwrap(),
        "answered once"
    );
    assert_eq!(vm.finish().unwrap().response_body, b"late");
}

#[test]
fn bodies_are_reported_after_the_filter_s_changes_and_chunks_are_buffered() {
    let module = example();
    let mut vm = start(&module, &Environment::default());
    let spec = RequestSpec {
        method: Some("POST".into()),
        path: Some("/upper".into()),
        body: Some(policy_host::request::BodySpec::Text("hello, proxy".into())),
        ..RequestSpec::default()
    };
    let record = vm.request(&spec).unwrap();
    assert_eq!(record.upstream_body, b"HELLO, PROXY");

    // In chunks: the filter holds the first back and sees both together.
    let body = vm.begin(&spec).unwrap();
    assert_eq!(vm.request_headers(false).unwrap(), Flow::Continue);
    assert_eq!(vm.request_body(&body[..5], false).unwrap(), Flow::Paused);
    assert_eq!(vm.request_body(&body[5..], true).unwrap(), Flow::Continue);
    vm.upstream_response(None, &Response::json(200, "{}"))
        .unwrap();
    let record = vm.finish().unwrap();
    assert_eq!(record.upstream_body, b"HELLO, PROXY");
    assert_eq!(
        header(&record.response_headers, "x-example-upstream"),
        Some("seen")
    );
}

/// A guest that logs each response callback it gets: `headers` (with the
/// end-of-stream flag as `headers-end`), `body` / `body-end`, `trailers`.
fn response_logger() -> FilterModule {
    let wasm = guest(
        r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "headersheaders-endbodybody-endtrailers")
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
             (if (local.get 2)
               (then (drop (call $log (i32.const 2) (i32.const 107) (i32.const 11))))
               (else (drop (call $log (i32.const 2) (i32.const 100) (i32.const 7)))))
             (i32.const 0))
           (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
             (if (local.get 2)
               (then (drop (call $log (i32.const 2) (i32.const 122) (i32.const 8))))
               (else (drop (call $log (i32.const 2) (i32.const 118) (i32.const 4)))))
             (i32.const 0))
           (func (export "proxy_on_response_trailers") (param i32 i32) (result i32)
             (drop (call $log (i32.const 2) (i32.const 130) (i32.const 8)))
             (i32.const 0))"#,
    );
    FilterModule::from_bytes(&wasm).unwrap()
}

fn callbacks(vm: &mut Vm, spec: &RequestSpec) -> Vec<String> {
    vm.request(spec)
        .unwrap()
        .logs
        .into_iter()
        .map(|l| l.message)
        .collect()
}

#[test]
fn the_upstream_answers_in_chunks_with_trailers_and_a_head_request_gets_no_body() {
    let module = response_logger();
    let environment = Environment::default();
    environment.upstreams.answer(
        "chunked",
        Response {
            status: 200,
            body: b"0123456789".to_vec(),
            chunk_sizes: vec![4, 4],
            trailers: vec![("grpc-status".into(), b"0".to_vec())],
            ..Response::default()
        },
    );
    environment
        .upstreams
        .answer("plain", Response::json(200, "{\"ok\":true}"));
    environment.upstreams.answer("empty", Response::default());
    let mut vm = start(&module, &environment);
    let to = |cluster: &str, method: &str| RequestSpec {
        method: Some(method.into()),
        headers: policy_host::request::Headers::List(vec![(
            "x-celroute-cluster".into(),
            cluster.into(),
        )]),
        ..RequestSpec::default()
    };
    assert_eq!(
        callbacks(&mut vm, &to("chunked", "GET")),
        ["headers", "body", "body", "body", "trailers"]
    );
    assert_eq!(
        callbacks(&mut vm, &to("plain", "GET")),
        ["headers", "body-end"]
    );
    assert_eq!(callbacks(&mut vm, &to("plain", "HEAD")), ["headers-end"]);
    assert_eq!(callbacks(&mut vm, &to("empty", "GET")), ["headers-end"]);
    let record = vm.request(&to("chunked", "GET")).unwrap();
    assert_eq!(record.response_body, b"0123456789");
    assert_eq!(record.response_trailers.len(), 1);
}

#[test]
fn given_metadata_and_filter_state_are_what_the_filter_reads() {
    // Reads metadata.filter_metadata.envoy.lb.canary and answers it as the body.
    let wasm = guest(
        r#"(import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "metadata\00filter_metadata\00envoy.lb\00canary")
           (data (i32.const 200) "\00\00\00\00")
           (data (i32.const 300) "not found")
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (if (i32.eqz (call $prop (i32.const 100) (i32.const 40) (i32.const 16) (i32.const 20)))
               (then (drop (call $reply (i32.const 200) (i32.const 0) (i32.const 0)
                       (i32.load (i32.const 16)) (i32.load (i32.const 20))
                       (i32.const 200) (i32.const 4) (i32.const -1))))
               (else (drop (call $reply (i32.const 404) (i32.const 0) (i32.const 0)
                       (i32.const 300) (i32.const 9) (i32.const 200) (i32.const 4) (i32.const -1)))))
             (i32.const 1))"#,
    );
    let module = FilterModule::from_bytes(&wasm).unwrap();
    let mut vm = start(&module, &Environment::default());
    let spec: RequestSpec = serde_yaml::from_str(
        "properties:\n  - path: [metadata, filter_metadata, envoy.lb, canary]\n    value: 'yes'\n",
    )
    .unwrap();
    let record = vm.request(&spec).unwrap();
    assert_eq!(record.response_code, Some(200));
    assert_eq!(record.response_body, b"yes");
    let record = vm.request(&RequestSpec::default()).unwrap();
    assert_eq!(record.response_code, Some(404), "absent unless given");

    let bad = serde_yaml::from_str::<RequestSpec>("properties:\n  - path: a.b\n    value: 1.5\n")
        .expect_err("a fraction is refused");
    assert!(
        bad.to_string()
            .contains("property 'a.b': 1.5 is not an integer"),
        "{bad}"
    );
}

#[test]
fn the_clocks_read_the_time_outside_requests_and_monotonic_time_never_goes_back() {
    // on_configure: realtime (WASI and proxy-wasm) must be the environment's
    // time, and two monotonic readings must not go back.
    let wasm = guest(
        r#"(import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
           (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))"#,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
             (drop (call $now (i32.const 0)))
             (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 8)))
             (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 16)))
             (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 24)))
             (i32.and
               (i32.and
                 (i64.eq (i64.load (i32.const 0)) (i64.const 1700000000000000000))
                 (i64.eq (i64.load (i32.const 8)) (i64.const 1700000000000000000)))
               (i64.ge_u (i64.load (i32.const 24)) (i64.load (i32.const 16)))))"#,
    );
    let module = FilterModule::from_bytes(&wasm).unwrap();
    let environment = Environment::with_virtual_clock(1_700_000_000_000_000_000);
    assert!(module.start_in(&environment, b"").is_ok());
    assert!(
        module
            .start_in(&Environment::with_virtual_clock(5), b"")
            .is_err(),
        "the guest really compared the time"
    );
}

#[test]
fn shutdown_calls_on_done_then_on_delete_as_envoy_does() {
    let module = example();
    let environment = Environment::with_virtual_clock(1_000);
    let mut vm = module
        .start_with(&environment, b"", b"100")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vm.advance(Duration::from_millis(250)).unwrap(), 2);
    let shutdown = vm.shutdown().unwrap();
    assert!(shutdown.deleted);
    assert!(
        shutdown
            .logs
            .iter()
            .any(|l| l.message == "example-filter: done"),
        "{:?}",
        shutdown.logs
    );

    // proxy_on_delete follows a root context that is done; one that
    // answers false waits for proxy_done, and until then is not deleted.
    let root = |done: i32| {
        let wasm = guest(
            r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#,
            &format!(
                r#"(data (i32.const 100) "deleted")
                   (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
                   (func (export "proxy_on_done") (param i32) (result i32) (i32.const {done}))
                   (func (export "proxy_on_delete") (param i32)
                     (drop (call $log (i32.const 2) (i32.const 100) (i32.const 7))))"#
            ),
        );
        FilterModule::from_bytes(&wasm).unwrap()
    };
    let shutdown = start(&root(1), &Environment::default()).shutdown().unwrap();
    assert!(shutdown.deleted);
    assert_eq!(shutdown.logs.len(), 1);
    assert_eq!(shutdown.logs[0].message, "deleted");
    let shutdown = start(&root(0), &Environment::default()).shutdown().unwrap();
    assert!(!shutdown.deleted);
    assert!(shutdown.logs.is_empty());
}

#[test]
fn a_grpc_stream_sends_and_receives_and_can_be_answered_by_token() {
    let module = example();
    let environment = Environment::default();
    environment.upstreams.define_clusters(["chat"]);
    let mut vm = start(&module, &environment);
    vm.begin(&get("/grpc-stream/chat")).unwrap();
    assert_eq!(vm.request_headers(true).unwrap(), Flow::Paused);
    let stream = vm.grpc_streams().last().cloned().expect("a stream");
    assert_eq!(stream.sent, [b"one".to_vec(), b"two".to_vec()]);
    assert!(stream.local_closed, "the filter ended its side");
    let reply = GrpcStreamReply {
        initial_metadata: vec![("x-meta".into(), b"hello".to_vec())],
        messages: vec![b"A".to_vec(), b"B".to_vec(), b"C".to_vec()],
        trailing_metadata: vec![("x-trailer".into(), b"bye".to_vec())],
        status: 9,
        error_message: "not now".into(),
    };
    assert!(vm.answer_grpc_stream(stream.token, &reply).unwrap());
    assert!(
        !vm.answer_grpc_stream(stream.token, &reply).unwrap(),
        "a closed stream gets nothing more"
    );
    let record = vm.finish().unwrap();
    assert_eq!(
        String::from_utf8(record.response_body).unwrap(),
        "meta=hello; message=A; message=B; message=C; trailer=bye; close=9 not now{via_upstream}\n"
    );

    // To a cluster Envoy lacks: refused with ParseFailure.
    let record = vm.request(&get("/grpc-stream/elsewhere")).unwrap();
    assert_eq!(
        record.response_body,
        b"gRPC stream to elsewhere refused: ParseFailure\n"
    );
}

#[test]
fn a_cancelled_grpc_call_gets_no_answer_and_cancelling_twice_is_not_found() {
    // Calls the cluster in the plugin configuration's place on configure,
    // cancels the call, then tries again: Ok (0), then NotFound (1).
    let wasm = guest(
        r#"(import "env" "proxy_grpc_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_grpc_cancel" (func $cancel (param i32) (result i32)))"#,
        r#"(data (i32.const 100) "svcexample.EchoSay")
           (func (export "proxy_on_configure") (param i32 i32) (result i32)
             (if (call $call (i32.const 100) (i32.const 3) (i32.const 103) (i32.const 12)
                   (i32.const 115) (i32.const 3) (i32.const 0) (i32.const 0)
                   (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 16))
               (then (return (i32.const 0))))
             (i32.and
               (i32.eqz (call $cancel (i32.load (i32.const 16))))
               (i32.eq (call $cancel (i32.load (i32.const 16))) (i32.const 1))))
           (func (export "proxy_on_grpc_receive") (param i32 i32 i32) unreachable)"#,
    );
    let module = FilterModule::from_bytes(&wasm).unwrap();
    let environment = Environment::default();
    environment.upstreams.answer_grpc(
        "svc",
        GrpcReply {
            message: b"late".to_vec(),
            ..GrpcReply::default()
        },
    );
    let mut vm = start(&module, &environment);
    let token = vm.grpc_calls()[0].token;
    assert!(
        !vm.answer_grpc_call(token, &GrpcReply::default()).unwrap(),
        "a cancelled call is not answered (the guest would trap)"
    );
    vm.deliver_callouts().unwrap();
}

#[test]
fn the_vm_that_registered_a_queue_is_told_of_each_item_enqueued() {
    // A registers queue "q" and, when told, logs what it dequeues.
    let owner = guest(
        r#"(import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
           (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
           (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "q")
           (func (export "proxy_on_configure") (param i32 i32) (result i32)
             (i32.eqz (call $register (i32.const 100) (i32.const 1) (i32.const 16))))
           (func (export "proxy_on_queue_ready") (param i32 i32)
             (if (i32.eqz (call $dequeue (local.get 1) (i32.const 24) (i32.const 28)))
               (then (drop (call $log (i32.const 2) (i32.load (i32.const 24)) (i32.load (i32.const 28)))))))"#,
    );
    // B finds it and enqueues the plugin configuration.
    let writer = guest(
        r#"(import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
           (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "q")
           (func (export "proxy_on_configure") (param i32 i32) (result i32)
             (drop (call $resolve (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 16)))
             (drop (call $buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 24) (i32.const 28)))
             (i32.eqz (call $enqueue (i32.load (i32.const 16)) (i32.load (i32.const 24)) (i32.load (i32.const 28)))))"#,
    );
    let environment = Environment::default();
    let owner = FilterModule::from_bytes(&owner).unwrap();
    let writer = FilterModule::from_bytes(&writer).unwrap();
    let mut a = owner
        .start_in(&environment, b"")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut b = writer
        .start_in(&environment, b"first")
        .unwrap_or_else(|e| panic!("{e}"));
    writer
        .start_in(&environment, b"second")
        .unwrap_or_else(|e| panic!("{e}"));
    b.deliver_callouts().unwrap();
    assert!(b.take_logs().is_empty(), "only the registering VM is told");
    a.deliver_callouts().unwrap();
    let logs: Vec<String> = a.take_logs().into_iter().map(|l| l.message).collect();
    assert_eq!(logs, ["first", "second"]);
    a.deliver_callouts().unwrap();
    assert!(a.take_logs().is_empty(), "told once per item");
}
