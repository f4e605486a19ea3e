//! Semantics of the engine, through the public API with a recording host
//! (`testing::TestHost`).

use super::testing::TestHost;
use super::*;

const EXAMPLE: &str = r#"
clusters:
  aws-us-east-1:    {provider: aws,    region: us-east-1,    jurisdiction: us, price_per_1k_tokens: 0.50, egress_per_gb: 0.09}
  gcp-europe-west4: {provider: gcp,    region: europe-west4, jurisdiction: eu, price_per_1k_tokens: 0.45, egress_per_gb: 0.12}
  azure-westeurope: {provider: azure,  region: westeurope,   jurisdiction: eu, price_per_1k_tokens: 0.48, egress_per_gb: 0.087}
  onprem-fra:       {provider: onprem, region: fra,          jurisdiction: eu, price_per_1k_tokens: 0.10}
rules:
  - name: eu-residency
    when: request.headers[?'x-user-region'].orValue('') == 'eu'
    require: cluster.jurisdiction == 'eu'
  - name: block-unknown-tenant
    when: "!('x-tenant' in request.headers)"
    deny: {status: 403, message: tenant header required}
  - name: reasoning
    when: request.headers[?'x-task'].orValue('') == 'reasoning'
    prefer: [gcp-europe-west4, aws-us-east-1]
  - name: cheapest
    when: "'x-cheap' in request.headers"
    order_by: cluster.price_per_1k_tokens
default: aws-us-east-1
"#;

fn load(text: &str) -> Policy {
    match Policy::load(text) {
        Ok(p) => p,
        Err(e) => panic!("policy should load: {e}"),
    }
}

fn errors_of(text: &str) -> String {
    match Policy::load(text) {
        Ok(_) => panic!("policy should be rejected"),
        Err(e) => e.to_string(),
    }
}

fn decide(policy: &Policy, headers: &[(&str, &str)]) -> Decision {
    policy.decide(&mut TestHost::with_headers(headers), true)
}

fn routed(decision: &Decision) -> (&str, &str) {
    match &decision.outcome {
        Outcome::Route { cluster } => (cluster.as_str(), decision.rule.as_str()),
        other => panic!("expected a route, got {other:?} ({decision:?})"),
    }
}

#[test]
fn default_route_when_no_rule_selects() {
    let p = load(EXAMPLE);
    let d = decide(&p, &[("x-tenant", "acme")]);
    assert_eq!(routed(&d), ("aws-us-east-1", "default"));
}

#[test]
fn residency_constraint_narrows_and_later_selection_respects_it() {
    let p = load(EXAMPLE);
    // reasoning prefers gcp first: it is in the EU, so it stays.
    let d = decide(
        &p,
        &[
            ("x-tenant", "a"),
            ("x-user-region", "eu"),
            ("x-task", "reasoning"),
        ],
    );
    assert_eq!(routed(&d), ("gcp-europe-west4", "reasoning"));
    // default aws-us-east-1 is outside the EU: never chosen for an EU user.
    let d = decide(&p, &[("x-tenant", "a"), ("x-user-region", "eu")]);
    assert_eq!(routed(&d), ("gcp-europe-west4", "first-candidate"));
    let trace = d.trace.expect("trace requested");
    assert_eq!(
        trace.candidates,
        vec!["gcp-europe-west4", "azure-westeurope", "onprem-fra"]
    );
    assert_eq!(trace.steps[0].excluded, vec!["aws-us-east-1"]);
}

#[test]
fn selection_whose_clusters_are_excluded_falls_through() {
    let p = load(
        r#"
clusters:
  us: {jurisdiction: us}
  eu: {jurisdiction: eu}
rules:
  - {name: eu-only, require: "cluster.jurisdiction == 'eu'"}
  - {name: prefer-us, prefer: [us]}
default: us
"#,
    );
    let d = decide(&p, &[]);
    assert_eq!(routed(&d), ("eu", "first-candidate"));
    let steps = d.trace.expect("trace").steps;
    assert_eq!(steps[1].rule, "prefer-us");
    assert_eq!(steps[1].result, StepResult::FellThrough);
}

#[test]
fn constraints_apply_even_when_written_after_selections() {
    let p = load(
        r#"
clusters:
  us: {jurisdiction: us}
  eu: {jurisdiction: eu}
rules:
  - {name: prefer-us, prefer: [us]}
  - {name: eu-only, require: "cluster.jurisdiction == 'eu'"}
"#,
    );
    assert_eq!(routed(&decide(&p, &[])), ("eu", "first-candidate"));
}

#[test]
fn deny_with_status_and_json_body() {
    let p = load(EXAMPLE);
    let d = decide(&p, &[]);
    assert_eq!(
        d.outcome,
        Outcome::Deny {
            status: 403,
            message: "tenant header required".into()
        }
    );
    assert_eq!(d.rule, "block-unknown-tenant");
    let body: serde_json::Value = serde_json::from_str(&d.deny_body()).expect("json body");
    let error = &body["error"];
    assert_eq!(error["rule"], "block-unknown-tenant");
    assert_eq!(error["status"], 403);
    assert_eq!(error["message"], "tenant header required");
    assert_eq!(error["type"], "permission_error");
    assert_eq!(error["code"], "policy_denied");
}

#[test]
fn no_candidate_left_is_denied_naming_the_constraint() {
    let p = load(
        r#"
clusters:
  us: {jurisdiction: us}
  eu: {jurisdiction: eu}
rules:
  - {name: eu-only, require: "cluster.jurisdiction == 'eu'"}
  - {name: sovereign, when: "'x-gov' in request.headers", require: "cluster.jurisdiction == 'de'"}
default: us
"#,
    );
    let d = decide(&p, &[("x-gov", "1")]);
    match &d.outcome {
        Outcome::Deny { status, message } => {
            assert_eq!(*status, 451);
            assert!(message.contains("sovereign"), "{message}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    assert_eq!(d.rule, "sovereign");
    let p = load(&format!(
        "{}\noptions: {{no_candidate_status: 503}}\n",
        "clusters: {a: {x: 1}}\nrules: [{name: none, require: 'cluster.x == 2'}]"
    ));
    assert!(matches!(
        decide(&p, &[]).outcome,
        Outcome::Deny { status: 503, .. }
    ));
}

#[test]
fn require_error_excludes_that_cluster_fail_closed() {
    // `tier` is missing on 'b': evaluating the constraint there is an error.
    let p = load(
        r#"
clusters:
  a: {tier: 1}
  b: {}
  c: {tier: 1}
rules:
  - {name: tiered, require: "cluster.tier == 1"}
  - {name: want-b, prefer: [b]}
"#,
    );
    let d = decide(&p, &[]);
    assert_eq!(routed(&d), ("a", "first-candidate"));
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    assert!(
        d.errors[0].contains("rule 'tiered': require on 'b'"),
        "{:?}",
        d.errors
    );
}

#[test]
fn when_errors_apply_constraints_and_skip_selections() {
    let p = load(
        r#"
clusters:
  us: {jurisdiction: us}
  eu: {jurisdiction: eu}
rules:
  - name: eu-residency
    when: request.headers['x-user-region'] == 'eu'
    require: cluster.jurisdiction == 'eu'
  - name: pick-us
    when: request.headers['x-pick'] == 'us'
    prefer: [us]
default: us
"#,
    );
    // Header missing: the residency constraint applies (fail closed).
    let d = decide(&p, &[]);
    assert_eq!(routed(&d), ("eu", "first-candidate"));
    assert!(d
        .errors
        .iter()
        .any(|e| e.contains("rule 'eu-residency': when")));
    assert!(d.errors.iter().any(|e| e.contains("the rule applies")));
    // Region present but not eu: no constraint; the selection's when errors and is skipped.
    let d = decide(&p, &[("x-user-region", "us")]);
    assert_eq!(routed(&d), ("us", "default"));
    assert!(d
        .errors
        .iter()
        .any(|e| e.contains("rule 'pick-us': when") && e.contains("skipped")));
}

#[test]
fn when_error_on_deny_denies() {
    let p = load(
        r#"
clusters: {a: {}}
rules:
  - {name: block, when: "request.headers['x-tenant'] == 'evil'", deny: {status: 429}}
"#,
    );
    let d = decide(&p, &[]);
    assert_eq!(d.rule, "block");
    assert!(matches!(d.outcome, Outcome::Deny { status: 429, .. }));
    let d = decide(&p, &[("x-tenant", "good")]);
    assert_eq!(routed(&d), ("a", "first-candidate"));
}

#[test]
fn order_by_lowest_highest_and_ties_in_inventory_order() {
    let policy = |descending: bool| {
        load(&format!(
            r#"
clusters:
  a: {{price: 3}}
  b: {{price: 1.5}}
  c: {{price: 1.5}}
  d: {{price: 7}}
rules:
  - {{name: cost, order_by: cluster.price, descending: {descending}}}
"#
        ))
    };
    assert_eq!(routed(&decide(&policy(false), &[])), ("b", "cost"));
    assert_eq!(routed(&decide(&policy(true), &[])), ("d", "cost"));
}

#[test]
fn order_by_skips_clusters_without_a_key() {
    let p = load(
        r#"
clusters:
  a: {}
  b: {price: 9}
rules:
  - {name: cost, order_by: cluster.price}
"#,
    );
    let d = decide(&p, &[]);
    assert_eq!(routed(&d), ("b", "cost"));
    assert!(d.errors[0].contains("order_by on 'a'"));
}

#[test]
fn fetches_only_referenced_attributes() {
    let p = load(EXAMPLE);
    assert_eq!(
        p.referenced_attributes(),
        vec![
            "request.headers['x-cheap']",
            "request.headers['x-task']",
            "request.headers['x-tenant']",
            "request.headers['x-user-region']"
        ]
    );
    let mut host =
        TestHost::with_headers(&[("x-tenant", "a")]).property("source.address", b"1.2.3.4:5");
    p.decide(&mut host, false);
    let mut lookups = host.lookups.clone();
    lookups.sort();
    assert_eq!(
        lookups,
        vec![
            "header:x-cheap",
            "header:x-task",
            "header:x-tenant",
            "header:x-user-region"
        ]
    );

    let p = load(
        r#"
clusters: {a: {}, b: {}}
rules:
  - {name: local, when: "source.address.startsWith('127.')", prefer: [b]}
  - {name: any-debug, when: "request.headers.exists(h, h.startsWith('x-debug'))", prefer: [a]}
"#,
    );
    let mut host =
        TestHost::with_headers(&[("x-debug-me", "1")]).property("source.address", b"127.0.0.1:9");
    let d = p.decide(&mut host, false);
    assert_eq!(routed(&d), ("b", "local"));
    assert_eq!(host.lookups, vec!["headers:*", "property:source.address"]);
    assert_eq!(p.programs_compiled(), 2);
}

#[test]
fn typed_properties_and_missing_ones() {
    let p = load(
        r#"
clusters: {plain: {}, secure: {}}
rules:
  - {name: mtls, when: "connection.mtls && source.port > 1000", prefer: [secure]}
"#,
    );
    let mut host = TestHost::default()
        .property("connection.mtls", &[1])
        .property("source.port", &4000i64.to_le_bytes());
    assert_eq!(routed(&p.decide(&mut host, false)), ("secure", "mtls"));
    // Properties the host lacks are absent: the rule's when errors and it is skipped.
    let d = p.decide(&mut TestHost::default(), false);
    assert_eq!(routed(&d), ("plain", "first-candidate"));
    assert_eq!(d.errors.len(), 1);
}

#[test]
fn odd_header_values_never_panic() {
    let p = load(EXAMPLE);
    let mut host = TestHost::with_header_bytes(vec![
        ("x-tenant".into(), vec![0xff, 0xfe, b'a']),
        ("x-user-region".into(), "é\u{0}".as_bytes().to_vec()),
        ("x-task".into(), vec![b'r'; 1 << 20]),
    ]);
    let d = p.decide(&mut host, true);
    assert_eq!(routed(&d), ("aws-us-east-1", "default"));
}

#[test]
fn repeated_headers_read_as_their_first_value_however_referenced() {
    let p = load(
        r#"
clusters: {a: {}, b: {}, c: {}}
rules:
  - {name: whole-map, when: "request.headers.exists(k, k == 'x-n' && request.headers[k] == '1')", prefer: [b]}
  - {name: by-name, when: "request.headers['x-n'] == '1'", prefer: [c]}
"#,
    );
    let mut host = TestHost::with_headers(&[("x-n", "1"), ("x-n", "2")]);
    assert_eq!(routed(&p.decide(&mut host, false)), ("b", "whole-map"));
    let p = load("clusters: {a: {}, c: {}}\nrules:\n  - {name: by-name, when: \"request.headers['x-n'] == '1'\", prefer: [c]}\n");
    let mut host = TestHost::with_headers(&[("x-n", "1"), ("x-n", "2")]);
    assert_eq!(routed(&p.decide(&mut host, false)), ("c", "by-name"));
}

#[test]
fn json_policies_are_accepted() {
    let p = load(
        r#"{"clusters": {"a": {"x": 1}, "b": {}}, "rules": [{"name": "r", "prefer": ["b"]}]}"#,
    );
    assert_eq!(routed(&decide(&p, &[])), ("b", "r"));
}

#[test]
fn rejects_unknown_fields_with_position() {
    let e = errors_of("clusters: {a: {}}\nrules:\n  - name: r\n    requires: 'true'\n");
    assert!(e.contains("unknown field `requires`"), "{e}");
    assert!(e.contains("line 4"), "{e}");
}

#[test]
fn rejects_cel_syntax_errors_naming_rule_and_position() {
    let e =
        errors_of("clusters: {a: {}}\nrules:\n  - {name: broken, require: \"cluster.name ==\"}\n");
    assert!(
        e.starts_with("rule 'broken' (rules[0]): require: syntax error at line 1"),
        "{e}"
    );
    assert!(e.contains("`cluster.name ==`"), "{e}");
}

#[test]
fn rejects_unknown_clusters_with_a_hint() {
    let e =
        errors_of("clusters: {aws-us-east-1: {}}\nrules:\n  - {name: p, prefer: [aws-us-east1]}\n");
    assert!(
        e.contains("rule 'p' (rules[0]): prefer: unknown cluster 'aws-us-east1' (did you mean 'aws-us-east-1'?)"),
        "{e}"
    );
    let e = errors_of("clusters: {a: {}}\ndefault: b\n");
    assert!(e.contains("default: unknown cluster 'b'"), "{e}");
}

#[test]
fn rejects_unknown_functions_attributes_and_fields() {
    let e = errors_of(
        "clusters: {a: {}}\nrules:\n  - {name: f, when: \"lookup(request.path)\", prefer: [a]}\n",
    );
    assert!(e.contains("unknown function 'lookup'"), "{e}");
    let e = errors_of(
        "clusters: {a: {}}\nrules:\n  - {name: f, when: \"request.pth == '/'\", prefer: [a]}\n",
    );
    assert!(
        e.contains("unknown attribute 'request.pth' (did you mean 'request.path'?)"),
        "{e}"
    );
    let e = errors_of("clusters: {a: {jurisdiction: eu}}\nrules:\n  - {name: eu-residency, require: \"cluster.jursidiction == 'eu'\"}\n");
    assert!(
        e.contains("rule 'eu-residency' (rules[0]): require: no cluster in the inventory has the attribute 'cluster.jursidiction' (did you mean 'jurisdiction'?) at line 1, column 9 in `cluster.jursidiction == 'eu'`"),
        "{e}"
    );
    let e = errors_of(
        "clusters: {a: {}}\nrules:\n  - {name: f, when: \"reqest.path == '/'\", prefer: [a]}\n",
    );
    assert!(
        e.contains("undeclared reference to 'reqest' (did you mean 'request'?)"),
        "{e}"
    );
    let e = errors_of(
        "clusters: {a: {}}\nrules:\n  - {name: f, when: \"cluster.name == 'a'\", prefer: [a]}\n",
    );
    assert!(e.contains("not in when"), "{e}");
    let e = errors_of("clusters: {a: {}}\nrules:\n  - {name: f, when: \"request.headers['X-Tenant'] == 'a'\", prefer: [a]}\n");
    assert!(e.contains("use 'x-tenant'"), "{e}");
}

#[test]
fn accepts_standard_and_extension_functions() {
    load(
        r#"
clusters: {a: {tags: [gpu]}, b: {}}
rules:
  - name: many
    when: >
      request.path.matches('^/v1/') && request.path.startsWith('/v1') &&
      request.headers[?'x-model'].orValue('').lowerAscii().contains('gpt') &&
      size(request.headers) > 0 && math.greatest(1, 2) == 2 &&
      request.time > timestamp('2020-01-01T00:00:00Z') &&
      has(request.headers.host) && int('3') == 3 && type(request.path) == string &&
      [1, 2].all(x, x > 0) && clusters['a'].tags.exists(t, t == 'gpu')
    prefer: [a]
"#,
    );
}

#[test]
fn rejects_malformed_rules_and_options() {
    let e = errors_of("clusters: {a: {}}\nrules:\n  - {name: two, prefer: [a], require: 'true'}\n");
    assert!(
        e.contains("exactly one of require, deny, prefer, order_by, split (this one has 2)"),
        "{e}"
    );
    let e = errors_of("clusters: {a: {}}\nrules:\n  - {name: default, prefer: [a]}\n");
    assert!(e.contains("reserved"), "{e}");
    let e = errors_of(
        "clusters: {a: {}}\nrules:\n  - {name: x, prefer: [a]}\n  - {name: x, prefer: [a]}\n",
    );
    assert!(
        e.contains("rule 'x' (rules[1]): another rule has the same name"),
        "{e}"
    );
    let e = errors_of("clusters: {a: {}}\noptions: {routing_header: X-Cluster, log_level: loud}\n");
    assert!(e.contains("options.routing_header"), "{e}");
    assert!(e.contains("options.log_level"), "{e}");
    let e = errors_of("clusters: {}\n");
    assert!(e.contains("no cluster"), "{e}");
    let e = errors_of("");
    assert!(e.contains("empty"), "{e}");
    let e = errors_of("clusters: {a: {name: x}}\n");
    assert!(e.contains("clusters.a.name"), "{e}");
    let e = errors_of("{\"clusters\": }");
    assert!(
        e.starts_with("policy: invalid JSON at line 1, column"),
        "{e}"
    );
}

#[test]
fn decisions_serialize_for_tools() {
    let p = load(EXAMPLE);
    let d = decide(&p, &[("x-tenant", "a")]);
    let json = serde_json::to_value(&d).expect("serializes");
    assert_eq!(json["action"], "route");
    assert_eq!(json["cluster"], "aws-us-east-1");
    assert_eq!(json["rule"], "default");
    assert!(json["trace"]["steps"].is_array());
}

#[test]
fn decision_cache_answers_repeated_values_with_the_same_decision() {
    let cached = Router::new(load(EXAMPLE));
    let uncached = Router::new(load(&format!(
        "{EXAMPLE}options: {{decision_cache_size: 0}}\n"
    )));
    assert_eq!(
        cached.policy().decision_cache_size(),
        DEFAULT_DECISION_CACHE_SIZE
    );
    assert_eq!(uncached.policy().decision_cache_size(), 0);
    let requests: [&[(&str, &str)]; 6] = [
        &[
            ("x-tenant", "a"),
            ("x-user-region", "eu"),
            ("x-task", "reasoning"),
        ],
        &[("x-tenant", "a"), ("x-task", "reasoning")],
        &[("x-user-region", "eu")],
        // Absent and empty are different values.
        &[("x-tenant", "a"), ("x-cheap", "")],
        &[("x-tenant", "a")],
        // Headers the policy does not read do not split the cache.
        &[("x-tenant", "a"), ("x-other", "1")],
    ];
    for round in 0..3 {
        for headers in requests {
            let mut host = TestHost::with_headers(headers);
            let (from_cache, served) = cached.decide(&mut host, false);
            let (evaluated, unserved) =
                uncached.decide(&mut TestHost::with_headers(headers), false);
            assert_eq!(*from_cache, *evaluated, "round {round}, {headers:?}");
            // The decision path says where each decision came from.
            let first = round == 0 && headers != requests[5];
            let expected = if first {
                Served::Missed
            } else {
                Served::FromCache
            };
            assert_eq!(served, expected, "round {round}, {headers:?}");
            assert_eq!(unserved, Served::Evaluated);
            // Every read attribute is fetched even on a hit: it is the key.
            assert_eq!(host.lookups.len(), 4);
        }
    }
    assert_eq!(
        cached.decision_cache_stats(),
        CacheStats {
            hits: 13,
            misses: 5
        }
    );
    assert_eq!(uncached.decision_cache_stats(), CacheStats::default());
    // A trace always evaluates.
    let (d, served) = cached.decide(&mut TestHost::with_headers(&[("x-tenant", "a")]), true);
    assert!(d.trace.is_some());
    assert_eq!(served, Served::Evaluated);
    assert_eq!(cached.decision_cache_stats().hits, 13);
}

#[test]
fn decision_cache_keeps_at_most_its_size() {
    let p = Router::new(load(
        "clusters: {a: {}, b: {}}\nrules:\n  - {name: r, when: \"request.headers[?'x-n'].orValue('') == '1'\", prefer: [b]}\noptions: {decision_cache_size: 2}\n",
    ));
    for n in ["1", "2", "3", "1"] {
        p.decide(&mut TestHost::with_headers(&[("x-n", n)]), false);
    }
    // '1' was evicted by '3' (least recently used), so it missed again.
    assert_eq!(p.decision_cache_stats(), CacheStats { hits: 0, misses: 4 });
    p.decide(&mut TestHost::with_headers(&[("x-n", "1")]), false);
    assert_eq!(p.decision_cache_stats().hits, 1);
    // Long values are decided without being kept.
    let long = "x".repeat(4096);
    for _ in 0..3 {
        p.decide(&mut TestHost::with_headers(&[("x-n", &long)]), false);
    }
    assert_eq!(p.decision_cache_stats(), CacheStats { hits: 1, misses: 7 });
}

#[test]
fn decision_cache_is_off_for_per_request_attributes() {
    for when in [
        "request.time > timestamp('2020-01-01T00:00:00Z')",
        "request.id != ''",
        "source.port > 0",
        "connection.id > 0u",
        "request.headers.exists(h, h == 'x-a')",
    ] {
        let p = Router::new(load(&format!(
            "clusters: {{a: {{}}, b: {{}}}}\nrules:\n  - {{name: r, when: \"{when}\", prefer: [b]}}\n"
        )));
        assert_eq!(p.policy().decision_cache_size(), 0, "{when}");
        let (_, served) = p.decide(&mut TestHost::default(), false);
        assert_eq!(served, Served::Evaluated, "{when}");
        assert_eq!(p.decision_cache_stats(), CacheStats::default(), "{when}");
    }
    let e = errors_of("clusters: {a: {}}\noptions: {decision_cache_size: 100000000}\n");
    assert!(e.contains("options.decision_cache_size"), "{e}");
}

/// Requests that exercise present, absent, empty, odd and repeated values.
fn variants() -> Vec<TestHost> {
    let headers: [&[(&str, &str)]; 9] = [
        &[],
        &[("x-tenant", "acme"), ("x-user-region", "eu")],
        &[("x-tenant", ""), ("x-user-region", "")],
        &[("x-tenant", "blocked-3"), ("x-model", "model-4-large")],
        &[
            ("x-model", "gpt-4o"),
            ("x-task", "reasoning"),
            ("x-user-region", "us"),
        ],
        &[
            ("x-task", "task-5"),
            ("x-tenant", "t"),
            ("x-model", "é-model"),
        ],
        &[("x-user-region", "eu"), ("x-user-region", "us")],
        &[("x-cheap", "1"), ("x-priority", "latency")],
        &[
            ("x-tenant", "acme"),
            ("x-task", "embeddings"),
            ("x-priority", "cost"),
        ],
    ];
    let mut out = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let mut host = TestHost::with_headers(h);
        match i % 3 {
            0 => host = host.property("request.url_path", b"/v1/chat/completions"),
            1 => host = host.property("request.url_path", b"/healthz"),
            _ => {} // absent: the interpreter errors, the fast path must defer
        }
        if i % 2 == 0 {
            host = host.property("request.method", b"POST");
        }
        out.push(host);
    }
    out
}

#[test]
fn fast_paths_decide_exactly_as_the_interpreter() {
    let whens = [
        "request.headers[?'x-user-region'].orValue('') == 'eu'",
        "'eu' == request.headers[?'x-user-region'].orValue('')",
        "request.headers[?'x-user-region'].orValue('none') != 'eu'",
        "!('x-tenant' in request.headers)",
        "'x-tenant' in request.headers && request.headers['x-tenant'] == ''",
        "request.headers['x-tenant'] == 'acme'",
        "request.headers['x-tenant'].startsWith('blocked-') || request.headers[?'x-task'].orValue('') == 'reasoning'",
        "request.headers[?'x-model'].orValue('').startsWith('model-4')",
        "request.headers[?'x-model'].orValue('').endsWith('-large') && request.url_path.startsWith('/v1/')",
        "request.headers[?'x-model'].orValue('').contains('model')",
        "request.url_path.startsWith('/v1/') || request.headers[?'x-cheap'].orValue('') == '1'",
        "request.url_path == '/healthz' && !('x-cheap' in request.headers)",
        "request.method == 'POST' && request.headers[?'x-priority'].orValue('') != 'latency'",
        "!(request.url_path.startsWith('/v1/') && request.headers['x-model'] == 'gpt-4o')",
        "true && request.headers[?'x-task'].orValue('') == 'task-5'",
        "false || 'x-priority' in request.headers",
        // Not recognised: left to the interpreter whatever the request.
        "size(request.headers) > 2",
        "request.headers[?'x-model'].orValue('').matches('^gpt-')",
    ];
    let mut recognised = 0;
    for when in whens {
        for action in [
            "prefer: [b]",
            "deny: {status: 403}",
            "require: cluster.name == 'b'",
        ] {
            let text = format!(
                "clusters: {{a: {{}}, b: {{}}}}\nrules:\n  - {{name: r, when: \"{when}\", {action}}}\noptions: {{decision_cache_size: 0}}\n"
            );
            let fast = load(&text);
            let (interpreted, removed) = load(&text).without_fast_paths();
            recognised += removed;
            for (i, host) in variants().into_iter().enumerate() {
                let mut a = host.clone();
                let mut b = host;
                let x = fast.decide(&mut a, true);
                let y = interpreted.decide(&mut b, true);
                assert_eq!(x, y, "`{when}` with {action}, request {i}");
            }
        }
    }
    // 16 of the 18 conditions, each under three actions.
    assert_eq!(recognised, 16 * 3);

    // The shipped policies decide alike with and without fast paths.
    let mut shipped = 0;
    for text in [
        include_str!("../../../policies/eu-residency-cost.yaml"),
        include_str!("../../../policies/task-specialization.yaml"),
        include_str!("../../../policies/active-passive.yaml"),
    ] {
        let fast = load(text);
        let (interpreted, removed) = load(text).without_fast_paths();
        shipped += removed;
        for (mut a, mut b) in variants().into_iter().zip(variants()) {
            assert_eq!(fast.decide(&mut a, true), interpreted.decide(&mut b, true));
        }
    }
    // All four of eu-residency-cost's and two of task-specialization's.
    assert_eq!(shipped, 6);
}
