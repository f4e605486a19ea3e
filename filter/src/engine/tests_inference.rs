//! The inference vocabulary: `request.body.*` and `budget.<name>.*`, their
//! load errors, and decisions that depend on them.

use super::testing::TestHost;
use super::*;

const POLICY: &str = r#"
clusters:
  gcp: {price_per_1k_tokens: 0.45}
  onprem: {price_per_1k_tokens: 0.10}
rules:
  - name: trial-budget
    when: request.headers[?'x-plan'].orValue('') == 'trial' && budget.tokens.exceeded
    deny: {status: 429, message: spent}
  - name: cloud-budget
    when: budget.cloud.remaining < 0.5
    require: cluster.name == 'onprem'
  - name: reasoning
    when: request.body.?model.orValue('').startsWith('o')
    prefer: [gcp]
  - name: streams
    when: request.body.stream && request.body.?max_tokens.orValue(0) > 100
    prefer: [gcp]
default: onprem
budgets:
  - {name: tokens, unit: tokens, limit: 200, window: day, key_header: x-tenant}
  - {name: cloud, unit: cost, limit: 1.0, window: hour, key_header: x-tenant, clusters: [gcp]}
"#;

fn policy(text: &str) -> Policy {
    match Policy::load(text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn load_error(text: &str) -> String {
    match Policy::load(text) {
        Ok(_) => panic!("loaded: {text}"),
        Err(e) => e.to_string(),
    }
}

fn body(json: &str) -> BodySummary {
    match BodySummary::read(json.as_bytes(), Some(b"application/json")) {
        Ok(b) => b,
        Err(e) => panic!("{e:?}"),
    }
}

fn decide(p: &Policy, host: TestHost) -> Decision {
    let mut host = host;
    p.decide(&mut host, false)
}

#[test]
fn the_model_in_the_body_routes() {
    let p = policy(POLICY);
    assert!(p.reads_body());
    let d = decide(
        &p,
        TestHost::default().body(&body(r#"{"model":"o3-mini"}"#)),
    );
    assert_eq!((d.cluster(), d.rule.as_str()), (Some("gcp"), "reasoning"));
    let d = decide(
        &p,
        TestHost::default().body(&body(r#"{"model":"llama","stream":true,"max_tokens":500}"#)),
    );
    assert_eq!(d.rule, "streams");
    // Without a body: `stream` is false and the model absent.
    let d = decide(&p, TestHost::default().body(&BodySummary::empty()));
    assert_eq!((d.cluster(), d.rule.as_str()), (Some("onprem"), "default"));
    assert!(d.errors.is_empty(), "{:?}", d.errors);
}

#[test]
fn a_policy_reading_only_headers_does_not_read_the_body() {
    let p = policy("clusters: {a: {}}\nrules:\n  - name: r\n    when: request.headers[?'x'].orValue('') == 'y'\n    prefer: [a]\n");
    assert!(!p.reads_body());
    assert_eq!(p.max_body_bytes(), DEFAULT_MAX_BODY_BYTES);
}

#[test]
fn budgets_decide_per_request_and_turn_the_cache_off() {
    let p = policy(POLICY);
    assert_eq!(
        p.decision_cache_size(),
        0,
        "spend changes with every response"
    );
    let trial = [("x-plan", "trial"), ("x-tenant", "t")];
    let d = decide(
        &p,
        TestHost::with_headers(&trial)
            .spent("tokens", 150.0)
            .body(&BodySummary::empty()),
    );
    assert_eq!(d.cluster(), Some("onprem"));
    let d = decide(
        &p,
        TestHost::with_headers(&trial)
            .spent("tokens", 200.0)
            .body(&BodySummary::empty()),
    );
    assert_eq!(
        d.outcome,
        Outcome::Deny {
            status: 429,
            message: "spent".into()
        }
    );
    // Remaining 0.3 of the cloud budget: only on premises.
    let o3 = body(r#"{"model":"o3"}"#);
    let d = decide(&p, TestHost::default().spent("cloud", 0.7).body(&o3));
    assert_eq!((d.cluster(), d.rule.as_str()), (Some("onprem"), "default"));
    let d = decide(&p, TestHost::default().spent("cloud", 0.2).body(&o3));
    assert_eq!(d.cluster(), Some("gcp"));
    let b = &p.budgets()[1];
    assert!(b.charges("gcp") && !b.charges("onprem"));
}

#[test]
fn unknown_body_fields_and_budgets_are_load_errors() {
    let base = "clusters: {a: {}}\nrules:\n  - name: r\n    when: WHEN\n    prefer: [a]\n";
    let e = load_error(&base.replace("WHEN", "request.body.modl == 'x'"));
    assert!(e.contains("did you mean 'request.body.model'"), "{e}");
    let e = load_error(&base.replace("WHEN", "request.body.?temperature.orValue(0.0) > 1.0"));
    assert!(e.contains("the body fields are model, stream"), "{e}");
    let e = load_error(&base.replace("WHEN", "budget.tokens.exceeded"));
    assert!(
        e.contains("unknown budget 'budget.tokens'") && e.contains("declares no budgets"),
        "{e}"
    );
    let with_budget =
        format!("{base}budgets:\n  - {{name: tokens, unit: tokens, limit: 5, window: day}}\n");
    let e = load_error(&with_budget.replace("WHEN", "budget.token.exceeded"));
    assert!(e.contains("did you mean 'budget.tokens'"), "{e}");
    let e = load_error(&with_budget.replace("WHEN", "budget.tokens.exceded"));
    assert!(e.contains("did you mean 'exceeded'"), "{e}");
    assert!(
        policy(&with_budget.replace("WHEN", "budget.tokens.spent > 1.0"))
            .budgets()
            .len()
            == 1
    );
}

#[test]
fn bad_budgets_and_body_limits_are_load_errors_naming_the_field() {
    let cases = [
        (
            "{name: Tokens, unit: tokens, limit: 5, window: day}",
            "lower-case letters",
        ),
        (
            "{name: t, unit: dollars, limit: 5, window: day}",
            "'dollars' is not one of tokens, cost, egress_bytes",
        ),
        (
            "{name: t, unit: cost, limit: -1, window: day}",
            "budgets[0] 't'.limit",
        ),
        (
            "{name: t, unit: cost, limit: 1, window: week}",
            "'week' is not one of minute, hour, day, month",
        ),
        (
            "{name: t, unit: cost, limit: 1, window: day, clusters: [b]}",
            "'b' is not in the inventory (did you mean 'a'?)",
        ),
        (
            "{name: t, unit: cost, limit: 1, window: day, key_header: X-Tenant}",
            "key_header",
        ),
    ];
    for (budget, expected) in cases {
        let e = load_error(&format!("clusters: {{a: {{}}}}\nbudgets:\n  - {budget}\n"));
        assert!(e.contains(expected), "{budget}: {e}");
    }
    let e = load_error("clusters: {a: {}}\nbudgets:\n  - {name: t, unit: cost, limit: 1, window: day}\n  - {name: t, unit: tokens, limit: 1, window: day}\n");
    assert!(e.contains("another budget has this name"), "{e}");
    let e = load_error("clusters: {a: {}}\noptions: {max_body_bytes: 0}\n");
    assert!(e.contains("options.max_body_bytes"), "{e}");
}

#[test]
fn a_budget_keeps_its_fingerprint_when_only_its_limit_changes() {
    let fingerprint = |text: &str| policy(text).budgets()[0].fingerprint.clone();
    let one = "clusters: {a: {}}\nbudgets:\n  - {name: t, unit: cost, limit: 1, window: day}\n";
    assert_eq!(
        fingerprint(one),
        fingerprint(&one.replace("limit: 1", "limit: 2"))
    );
    assert_ne!(fingerprint(one), fingerprint(&one.replace("day", "hour")));
    assert_ne!(
        fingerprint(one),
        fingerprint(&one.replace("cost", "tokens"))
    );
}
