//! ABI edge cases, with small hand-written guest modules: bad pointers, wrong
//! return values and signatures, traps, runaway loops, missing exports and
//! imports. The host must answer with Envoy's statuses or a clear error, and
//! never panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use policy_host::request::RequestSpec;
use policy_host::vm::{FilterModule, StartError};

mod common;
use common::guest;

fn module(imports: &str, body: &str) -> FilterModule {
    FilterModule::from_bytes(&guest(imports, body)).expect("module loads")
}

fn start_error(module: &FilterModule) -> StartError {
    match module.start(b"config") {
        Ok(_) => panic!("start should fail"),
        Err(e) => e,
    }
}

const LOG: &str = r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;

#[test]
fn configure_sees_the_status_envoy_gives_for_a_bad_pointer() {
    // on_configure succeeds only if logging from an out-of-bounds pointer
    // returned InvalidMemoryAccess (6).
    let m = module(
        LOG,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
             (i32.eq (call $log (i32.const 2) (i32.const 0xfffffff0) (i32.const 100)) (i32.const 6)))"#,
    );
    assert!(m.start(b"").is_ok());
}

#[test]
fn a_length_that_overflows_the_address_space_is_refused() {
    let m = module(
        LOG,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
             (i32.eq (call $log (i32.const 2) (i32.const 65536) (i32.const -1)) (i32.const 6)))"#,
    );
    assert!(m.start(b"").is_ok());
}

#[test]
fn a_return_pointer_outside_memory_gets_invalid_memory_access() {
    let m = module(
        r#"(import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
             ;; plugin configuration (7), return pointers far outside memory
             (i32.eq (call $buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 0x7ffffff0) (i32.const 0x7ffffff8))
                     (i32.const 6)))"#,
    );
    assert!(m.start(b"some configuration").is_ok());
}

#[test]
fn configuration_bytes_reach_the_guest_through_its_allocator() {
    // Reads the plugin configuration, then checks its first byte is 'p'.
    let m = module(
        r#"(import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
             (if (i32.ne (call $buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 16) (i32.const 20)) (i32.const 0))
               (then (return (i32.const 0))))
             (i32.and
               (i32.eq (i32.load (i32.const 20)) (local.get 1))
               (i32.eq (i32.load8_u (i32.load (i32.const 16))) (i32.const 112))))"#,
    );
    assert!(m.start(b"policy text").is_ok());
    assert!(
        m.start(b"other text").is_err(),
        "the guest really compared the bytes"
    );
}

#[test]
fn an_allocator_that_returns_null_gets_invalid_memory_access() {
    let text = r#"(module
      (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "proxy_abi_version_0_2_1"))
      (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
      (func (export "proxy_on_context_create") (param i32 i32))
      (func (export "proxy_on_configure") (param i32 i32) (result i32)
        (i32.eq (call $buf (i32.const 7) (i32.const 0) (i32.const -1) (i32.const 16) (i32.const 20)) (i32.const 6))))"#;
    let m = FilterModule::from_bytes(&wat::parse_str(text).unwrap()).unwrap();
    assert!(m.start(b"x").is_ok());
}

#[test]
fn configure_returning_false_is_a_rejection_carrying_the_guest_logs() {
    let m = module(
        LOG,
        r#"(data (i32.const 100) "bad policy: rule 'x'")
           (func (export "proxy_on_configure") (param i32 i32) (result i32)
             (drop (call $log (i32.const 4) (i32.const 100) (i32.const 20)))
             (i32.const 0))"#,
    );
    match start_error(&m) {
        StartError::Rejected { logs, .. } => {
            assert_eq!(logs.len(), 1);
            assert_eq!(logs[0].message, "bad policy: rule 'x'");
            assert_eq!(logs[0].level_name(), "error");
        }
        other => panic!("expected a rejection, got {other}"),
    }
}

#[test]
fn a_trap_names_the_callback() {
    let m = module(
        "",
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) unreachable)"#,
    );
    match start_error(&m) {
        StartError::Fault(fault) => {
            assert_eq!(fault.callback, "proxy_on_configure");
            assert!(fault.message.contains("unreachable"), "{}", fault.message);
        }
        other => panic!("expected a fault, got {other}"),
    }
}

#[test]
fn a_runaway_loop_is_stopped_and_the_host_goes_on() {
    let m = module(
        "",
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (loop $forever (br $forever))
             (i32.const 0))"#,
    );
    let mut vm = m.start(b"").expect("starts");
    let fault = vm
        .request(&RequestSpec::default())
        .expect_err("the loop must be stopped");
    assert_eq!(fault.callback, "proxy_on_request_headers");
    assert!(fault.message.contains("fuel"), "{}", fault.message);
    // The module is still usable: a fresh VM starts and serves.
    let mut vm = m.start(b"").expect("starts again");
    assert_eq!(vm.state().exchange.contexts, vec![1]);
}

#[test]
fn proc_exit_ends_the_callback_with_its_code() {
    let m = module(
        r#"(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))"#,
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32)
             (call $exit (i32.const 3)) (i32.const 1))"#,
    );
    match start_error(&m) {
        StartError::Fault(fault) => {
            assert_eq!(fault.callback, "proxy_on_configure");
            assert!(fault.message.contains("proc_exit(3)"), "{}", fault.message);
        }
        other => panic!("expected a fault, got {other}"),
    }
}

#[test]
fn a_callback_with_the_wrong_signature_is_a_clear_error() {
    let m = module(
        "",
        r#"(func (export "proxy_on_configure") (param i32 i32 i32) (result i32) (i32.const 1))"#,
    );
    match start_error(&m) {
        StartError::Fault(fault) => {
            assert_eq!(fault.callback, "proxy_on_configure");
            assert!(
                fault
                    .message
                    .contains("the proxy-wasm ABI wants (i32, i32) -> i32"),
                "{}",
                fault.message
            );
        }
        other => panic!("expected a fault, got {other}"),
    }
}

#[test]
fn vm_start_returning_false_is_an_error() {
    let m = module(
        "",
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 0))
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))"#,
    );
    match start_error(&m) {
        StartError::Fault(fault) => assert_eq!(fault.callback, "proxy_on_vm_start"),
        other => panic!("expected a fault, got {other}"),
    }
}

#[test]
fn missing_exports_and_imports_are_load_errors_naming_them() {
    let no_version = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
             (func (export "proxy_on_context_create") (param i32 i32)))"#,
    )
    .unwrap();
    let e = FilterModule::from_bytes(&no_version)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("proxy_abi_version_0_2_1"), "{e}");

    let no_allocator = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "proxy_abi_version_0_2_1"))
             (func (export "proxy_on_context_create") (param i32 i32)))"#,
    )
    .unwrap();
    let e = FilterModule::from_bytes(&no_allocator)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("does not export proxy_on_memory_allocate"),
        "{e}"
    );

    let unknown_import = guest(
        r#"(import "env" "proxy_teleport" (func (param i32) (result i32)))
           (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))"#,
        "",
    );
    let e = FilterModule::from_bytes(&unknown_import)
        .err()
        .expect("must fail")
        .to_string();
    assert!(e.contains("env.proxy_teleport"), "{e}");
    assert!(!e.contains("env.proxy_log"), "{e}");

    let e = FilterModule::from_bytes(b"not wasm at all")
        .err()
        .expect("must fail");
    assert!(
        format!("{e:#}").contains("not a valid WebAssembly module"),
        "{e:#}"
    );
}

#[test]
fn header_map_calls_follow_envoy() {
    // Adds "X-Added: v" twice, replaces it with "w", then reads it back.
    let m = module(
        r#"(import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
           (import "env" "proxy_remove_header_map_value" (func $remove (param i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "X-Added")
           (data (i32.const 120) "vw")
           (data (i32.const 140) "x-missing")
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $add (i32.const 0) (i32.const 100) (i32.const 7) (i32.const 120) (i32.const 1)))
             (drop (call $add (i32.const 0) (i32.const 100) (i32.const 7) (i32.const 120) (i32.const 1)))
             (drop (call $replace (i32.const 0) (i32.const 100) (i32.const 7) (i32.const 121) (i32.const 1)))
             ;; a missing header is NotFound (1); an unknown map type is BadArgument (2)
             (if (i32.ne (call $get (i32.const 0) (i32.const 140) (i32.const 9) (i32.const 16) (i32.const 20)) (i32.const 1))
               (then unreachable))
             (if (i32.ne (call $remove (i32.const 99) (i32.const 140) (i32.const 9)) (i32.const 2))
               (then unreachable))
             (i32.const 0))"#,
    );
    let mut vm = m.start(b"").unwrap();
    let record = vm.request(&RequestSpec::default()).unwrap();
    let added: Vec<_> = record
        .upstream_headers
        .iter()
        .filter(|(k, _)| k == "x-added")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(
        added,
        vec![b"w".to_vec()],
        "names are lower-cased; replace leaves one value"
    );
}

#[test]
fn a_local_response_with_a_malformed_header_map_is_refused() {
    let m = module(
        r#"(import "env" "proxy_send_local_response" (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "\ff\00\00\00")
           (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
           (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             ;; claims 255 pairs in a 4-byte buffer: SerializationFailure (3)
             (if (i32.ne (call $reply (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                                      (i32.const 100) (i32.const 4) (i32.const -1)) (i32.const 3))
               (then unreachable))
             (i32.const 0))"#,
    );
    let mut vm = m.start(b"").unwrap();
    let record = vm.request(&RequestSpec::default()).unwrap();
    assert!(record.local_response.is_none());
}

#[test]
fn foreign_functions_the_host_lacks_are_not_found() {
    let m = module(
        r#"(import "env" "proxy_call_foreign_function" (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))"#,
        r#"(data (i32.const 100) "no_such_functionclear_route_cache")
           (func (export "proxy_on_configure") (param i32 i32) (result i32)
             (i32.and
               (i32.eq (call $ff (i32.const 100) (i32.const 16) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 20)) (i32.const 1))
               (i32.eq (call $ff (i32.const 116) (i32.const 17) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 20)) (i32.const 0))))"#,
    );
    let mut vm = m.start(b"").unwrap();
    assert_eq!(vm.state().route_cache_clears, 1);
}
