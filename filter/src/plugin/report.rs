//! Reports to a policy-testing host (policy-host): the filter's own account
//! of the policies it loads and the decisions it makes.

use proxy_wasm::hostcalls;

/// Foreign function through which a policy-testing host (policy-host)
/// receives the filter's own account of policies and decisions. Envoy has
/// no such function: the call at configure time answers NotFound, and the
/// filter then never calls it per request.
const REPORT: &str = "celroute_report";

pub(super) fn report(kind: &str, payload: serde_json::Value) -> bool {
    let body = serde_json::json!({ "kind": kind, "report": payload }).to_string();
    hostcalls::call_foreign_function(REPORT, Some(body.as_bytes())).is_ok()
}
