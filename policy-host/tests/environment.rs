//! The environment several VMs share, as Envoy's workers share it: shared
//! data, a virtual clock that tests advance, scripted upstream responses and
//! callout replies. Small hand-written guests, and the real celroute.wasm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use policy_host::clock::{Clock, ClockError};
use policy_host::environment::Environment;
use policy_host::request::RequestSpec;
use policy_host::upstream::Response;
use policy_host::vm::FilterModule;
use policy_host::wire::serialize_map;

mod common;

const IMPORTS: &str = r#"
  (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))"#;

/// The shared guest with these imports, strings at known addresses, and `body`.
fn guest(body: &str) -> FilterModule {
    let body = format!(
        r#"(data (i32.const 1024) "key")
           (data (i32.const 1040) "value")
           (data (i32.const 1056) "now")
           (data (i32.const 1072) "svc")
           {body}"#
    );
    FilterModule::from_bytes(&common::guest(IMPORTS, &body)).expect("module loads")
}

#[test]
fn workers_of_one_environment_share_their_data() {
    // A configuration of one byte writes "key"; of two bytes, reading it
    // back must succeed or the configuration is rejected.
    let module = guest(
        r#"(func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
             (if (result i32) (i32.eq (local.get $size) (i32.const 1))
               (then (i32.eqz (call $set (i32.const 1024) (i32.const 3) (i32.const 1040) (i32.const 5) (i32.const 0))))
               (else (i32.eqz (call $get (i32.const 1024) (i32.const 3) (i32.const 2000) (i32.const 2004) (i32.const 2008))))))"#,
    );
    let proxy = Environment::default();
    module.start_in(&proxy, b"w").expect("the writer starts");
    assert_eq!(proxy.shared.get("key"), Some(b"value".to_vec()));
    assert!(
        module.start_in(&proxy, b"rr").is_ok(),
        "a second VM of the same environment reads what the first wrote"
    );
    assert!(
        module.start_in(&Environment::default(), b"rr").is_err(),
        "a VM of another environment does not"
    );
}

#[test]
fn the_virtual_clock_moves_only_when_the_test_moves_it() {
    // Each tick stores the current time under "now".
    let module = guest(
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_tick") (param i32)
             (drop (call $now (i32.const 3000)))
             (drop (call $set (i32.const 1056) (i32.const 3) (i32.const 3000) (i32.const 8) (i32.const 0))))"#,
    );
    let start = 1_700_000_000_000_000_000u64;
    let proxy = Environment::with_virtual_clock(start);
    let mut vm = module.start_in(&proxy, b"").expect("starts");
    let now = |proxy: &Environment| {
        let bytes = proxy.shared.get("now").expect("the tick stored the time");
        u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    };
    vm.tick().expect("tick");
    assert_eq!(now(&proxy), start);
    vm.tick().expect("tick");
    assert_eq!(now(&proxy), start, "no time passes by itself");
    proxy
        .clock
        .advance(Duration::from_secs(5))
        .expect("virtual");
    vm.tick().expect("tick");
    assert_eq!(now(&proxy), start + 5_000_000_000);
    assert_eq!(
        Clock::System.advance(Duration::from_secs(1)),
        Err(ClockError::NotVirtual)
    );
}

#[test]
fn a_callout_is_answered_only_when_a_reply_is_scripted() {
    let headers = serialize_map(&[
        (":method".into(), b"GET".to_vec()),
        (":path".into(), b"/signals".to_vec()),
        (":authority".into(), b"svc".to_vec()),
    ]);
    let escaped: String = headers.iter().map(|b| format!("\\{b:02x}")).collect();
    // The request pauses on a callout; its answer resumes it.
    let module = guest(&format!(
        r#"(data (i32.const 4096) "{escaped}")
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $call (i32.const 1072) (i32.const 3) (i32.const 4096) (i32.const {len})
                               (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                               (i32.const 1000) (i32.const 3008)))
             (i32.const 1))
           (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
             (drop (call $continue (i32.const 0))))"#,
        len = headers.len()
    ));
    let proxy = Environment::default();
    let mut vm = module.start_in(&proxy, b"").expect("starts");
    let unanswered = vm.request(&RequestSpec::default()).expect("runs");
    assert!(unanswered.paused, "no reply: the request waits");
    proxy
        .upstreams
        .reply_to_callout("svc", Response::json(200, "{}"));
    let answered = vm.request(&RequestSpec::default()).expect("runs");
    assert!(!answered.paused, "the reply resumed the request");
    assert_eq!(vm.state().http_calls.len(), 2);
    assert_eq!(vm.state().http_calls[1].upstream, "svc");
}

#[test]
fn each_upstream_cluster_answers_as_scripted() {
    let wasm = policy_host::default_wasm_candidates()
        .into_iter()
        .find(|p| p.is_file())
        .expect("celroute.wasm is built (make wasm)");
    let module = FilterModule::load(&wasm).expect("loads");
    let policy = b"clusters:\n  aws: {region: us}\n  gcp: {region: eu}\nrules:\n  - name: eu\n    when: request.headers[?'x-region'].orValue('') == 'eu'\n    prefer: [gcp]\ndefault: aws\n";
    let proxy = Environment::default();
    proxy
        .upstreams
        .answer("gcp", Response::json(503, r#"{"error":"overloaded"}"#));
    let mut vm = module.start_in(&proxy, policy).expect("starts");
    let status = |record: &policy_host::vm::RequestRecord| {
        record
            .response_headers
            .iter()
            .find(|(k, _)| k == ":status")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let to_aws = vm.request(&RequestSpec::default()).expect("runs");
    assert_eq!(to_aws.upstream_cluster.as_deref(), Some("aws"));
    assert_eq!(status(&to_aws).as_deref(), Some("200"));
    let eu = RequestSpec {
        headers: policy_host::request::Headers::List(vec![("x-region".into(), "eu".into())]),
        ..RequestSpec::default()
    };
    let to_gcp = vm.request(&eu).expect("runs");
    assert_eq!(to_gcp.upstream_cluster.as_deref(), Some("gcp"));
    assert_eq!(status(&to_gcp).as_deref(), Some("503"));
}
