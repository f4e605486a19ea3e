//! Differential test: the same requests through real Envoy and through
//! policy-host, both running the same `celroute.wasm` with the same policy,
//! must get identical decisions (cluster or denial status, deciding rule).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;

use celroute_tests::envoy::wasm;
use celroute_tests::http::{Connection, Reply};
use celroute_tests::{read_policy, repo_root, Stack};
use policy_host::policy::LoadedPolicy;
use policy_host::request::{BodySpec, RequestSpec};
use policy_host::testing::TestFile;
use policy_host::vm::FilterModule;

/// A decision as observed from outside: `route <cluster>` or `deny <status>`, and the rule.
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    outcome: String,
    rule: String,
}

/// Sends `spec` to Envoy over a fresh connection; returns what happened and
/// the client address Envoy saw (for policy-host's `source`).
fn through_envoy(listener: SocketAddr, spec: &RequestSpec) -> (Observed, SocketAddr) {
    let mut connection = Connection::open(listener).expect("connect");
    let source = connection.local_address().expect("local address");
    let pairs = spec.header_pairs();
    let headers: Vec<(&str, &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let body = spec.body.as_ref().map(BodySpec::text).unwrap_or_default();
    let reply = connection
        .send_to_host(
            spec.host.as_deref().unwrap_or("celroute.test"),
            spec.method.as_deref().unwrap_or("GET"),
            spec.path.as_deref().unwrap_or("/"),
            &headers,
            body.as_bytes(),
        )
        .expect("request through Envoy");
    (observed(&reply), source)
}

/// The decision Envoy's reply shows: who served it (or the denial status)
/// and the rule named in the decision header.
fn observed(reply: &Reply) -> Observed {
    let decision = reply
        .header("x-celroute-decision")
        .unwrap_or_else(|| panic!("no decision header: {} {}", reply.status, reply.body));
    let rule = decision
        .split("; ")
        .find_map(|part| part.strip_prefix("rule="))
        .unwrap_or_default()
        .to_string();
    let outcome = match reply.cloud() {
        Some(cloud) => format!("route {cloud}"),
        None => format!("deny {}", reply.status),
    };
    Observed { outcome, rule }
}

fn through_policy_host(policy: &mut LoadedPolicy<'_>, spec: &RequestSpec) -> Observed {
    let evaluation = policy.evaluate(spec).expect("policy-host evaluates");
    let decision = evaluation.decision;
    let outcome = match &decision.outcome {
        celroute::engine::Outcome::Route { cluster } => format!("route {cluster}"),
        celroute::engine::Outcome::Deny { status, .. } => format!("deny {status}"),
    };
    Observed {
        outcome,
        rule: decision.rule,
    }
}

/// Runs every spec both ways and compares; returns how many agreed.
fn compare(stack: &Stack, policy: &mut LoadedPolicy<'_>, cases: &[(String, RequestSpec)]) -> usize {
    let mut disagreements = Vec::new();
    for (name, spec) in cases {
        let (in_envoy, source) = through_envoy(stack.envoy.listener, spec);
        let mut spec = spec.clone();
        spec.source = Some(source.to_string());
        spec.destination = Some(stack.envoy.listener.to_string());
        let in_host = through_policy_host(policy, &spec);
        if in_envoy != in_host {
            disagreements.push(format!(
                "{name}: Envoy {in_envoy:?}, policy-host {in_host:?}"
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    cases.len()
}

fn module() -> FilterModule {
    FilterModule::load(&wasm().expect("built wasm")).expect("module")
}

#[test]
fn shipped_test_cases_decide_identically_in_envoy_and_policy_host() {
    let module = module();
    for test_file in [
        "eu-residency-cost.test.yaml",
        "task-specialization.test.yaml",
        "active-passive.test.yaml",
        // Live policies: their cases that start from no live state (every
        // cluster healthy, nothing measured or fed), as Envoy starts.
        "failover.test.yaml",
        "weighted-split.test.yaml",
        "cheapest-live.test.yaml",
        "hybrid-burst.test.yaml",
        "data-gravity.test.yaml",
        // The request body: routing by the model, and bodies refused.
        "model-routing.test.yaml",
    ] {
        let path = repo_root().join("policies").join(test_file);
        let tests: TestFile =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).expect("test file");
        let policy_text = read_policy(Path::new(&tests.policy).to_str().unwrap()).unwrap();
        let stack = Stack::start(|c| c.with_policy(&policy_text)).expect("stack");
        let mut policy = LoadedPolicy::load(&module, policy_text.as_bytes()).expect("loads");
        let cases: Vec<_> = tests
            .cases
            .into_iter()
            .filter(|c| c.live.is_none() && c.steps.is_empty())
            .map(|c| (c.name, c.request))
            .collect();
        let n = compare(&stack, &mut policy, &cases);
        assert!(n >= 1, "{test_file}: no case to compare");
    }
}

/// A policy whose rules read many attributes, so that any difference in how
/// the hosts present a request shows as a different deciding rule.
const ATTRIBUTE_POLICY: &str = r#"
clusters:
  aws-us-east-1: {}
  gcp-europe-west4: {}
  azure-westeurope: {}
  onprem-fra: {}
rules:
  - name: no-puts
    when: request.method == 'PUT'
    deny: {status: 405, message: no PUT here}
  - name: ipv6-clients
    when: source.address.startsWith('[')
    prefer: [onprem-fra]
  - name: empty-tenant
    when: request.headers[?'x-tenant'].orValue('none') == ''
    prefer: [onprem-fra]
  - name: no-query
    when: request.query == '' && request.url_path == '/no-query'
    prefer: [gcp-europe-west4]
  - name: eu-query
    when: request.query.contains('region=eu') && request.url_path == '/q'
    prefer: [gcp-europe-west4]
  - name: inference-host
    when: request.host.startsWith('inference.')
    prefer: [azure-westeurope]
  - name: accented
    when: request.headers.exists(k, request.headers[k].contains('é'))
    prefer: [azure-westeurope]
  - name: header-count-9
    when: size(request.headers) == 9
    prefer: [gcp-europe-west4]
  - name: header-count-other
    when: size(request.headers) > 9
    prefer: [onprem-fra]
  - name: everything-else
    when: >
      request.scheme == 'http' && request.protocol == 'HTTP/1.1' && size(request.id) == 36 &&
      source.port > 0 && destination.port > 0 && !connection.mtls &&
      source.address.startsWith('127.0.0.1:') && destination.address.endsWith(':' + string(destination.port))
    prefer: [aws-us-east-1]
options:
  decision_header: x-celroute-decision
"#;

fn spec(yaml: &str) -> RequestSpec {
    serde_yaml::from_str(yaml).expect("request spec")
}

fn attribute_cases() -> Vec<(String, RequestSpec)> {
    [
        ("plain GET", "{path: /plain}"),
        ("PUT is denied", "{method: PUT, path: /x}"),
        ("query and url_path", "{path: '/q?region=eu&x=1'}"),
        ("no query string", "{path: /no-query}"),
        ("an empty query string", "{path: '/no-query?'}"),
        ("host", "{host: inference.example.com}"),
        (
            "three extra headers",
            "{headers: {x-a: '1', x-b: '2', x-c: '3'}}",
        ),
        (
            "many headers",
            "{headers: {x-a: '1', x-b: '2', x-c: '3', x-d: '4', x-e: '5', x-f: '6'}}",
        ),
        (
            "repeated header, first empty",
            "{headers: [[x-tenant, ''], [x-tenant, acme]]}",
        ),
        (
            "repeated header, first set",
            "{headers: [[x-tenant, acme], [x-tenant, '']]}",
        ),
        (
            "mixed-case names",
            "{headers: {X-Tenant: '', X-Other: Value}}",
        ),
        ("non-ASCII value", "{headers: {x-city: café}}"),
        ("empty value", "{headers: {x-empty: ''}}"),
        (
            "body",
            "{method: POST, path: /plain, body: '{\"model\":\"m\"}'}",
        ),
    ]
    .into_iter()
    .map(|(name, yaml)| (name.to_string(), spec(yaml)))
    .collect()
}

#[test]
fn attributes_and_odd_headers_decide_identically() {
    let module = module();
    let stack = Stack::start(|c| c.with_policy(ATTRIBUTE_POLICY)).expect("stack");
    let mut policy = LoadedPolicy::load(&module, ATTRIBUTE_POLICY.as_bytes()).expect("loads");
    let cases = attribute_cases();
    compare(&stack, &mut policy, &cases);
    // The cases really exercise different rules: the comparison is not vacuous.
    let mut rules: Vec<String> = cases
        .iter()
        .map(|(_, s)| {
            let mut s = s.clone();
            s.source = Some("127.0.0.1:4000".into());
            through_policy_host(&mut policy, &s).rule
        })
        .collect();
    rules.sort();
    rules.dedup();
    assert!(rules.len() >= 7, "{rules:?}");
}

#[test]
fn a_path_without_a_query_reads_request_query_as_empty_as_envoy_does() {
    // Envoy's own attribute is the empty string when the path has no `?`
    // (its CEL context); the filter reads it so in Envoy and in policy-host.
    let stack = Stack::start(|c| c.with_policy(ATTRIBUTE_POLICY)).expect("stack");
    for path in ["/no-query", "/no-query?"] {
        let (observed, _) =
            through_envoy(stack.envoy.listener, &spec(&format!("{{path: '{path}'}}")));
        assert_eq!(observed.rule, "no-query", "{path}");
        assert_eq!(observed.outcome, "route gcp-europe-west4", "{path}");
    }
}

#[test]
fn ipv6_clients_decide_identically() {
    let module = module();
    let stack = Stack::start(|c| c.with_policy(ATTRIBUTE_POLICY)?.listen_on_ipv6()).expect("stack");
    assert!(stack.envoy.listener.is_ipv6());
    let mut policy = LoadedPolicy::load(&module, ATTRIBUTE_POLICY.as_bytes()).expect("loads");
    let cases = vec![
        ("IPv6 client".to_string(), spec("{path: /v6}")),
        ("IPv6 client, PUT".to_string(), spec("{method: PUT}")),
    ];
    compare(&stack, &mut policy, &cases);
    let (observed, source) = through_envoy(stack.envoy.listener, &cases[0].1);
    assert!(source.is_ipv6());
    assert_eq!(observed.rule, "ipv6-clients");
}

/// The workload-identity policy's test cases through an Envoy listener
/// serving TLS, each client presenting a certificate made for the case (its
/// SPIFFE ID as URI SAN, or only a subject, or none), and through
/// policy-host with the case's `mtls`: identical decisions, and the ones the
/// test file expects.
#[test]
fn workload_identity_over_mtls_decides_identically() {
    let module = module();
    let dir = tempfile::tempdir().unwrap();
    let mut pki = celroute_tests::tls::Pki::new(dir.path()).unwrap();
    let path = repo_root().join("policies/workload-identity.test.yaml");
    let tests: TestFile =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).expect("test file");
    let policy_text = read_policy(&tests.policy).unwrap();
    let (server, ca) = (pki.server.clone(), pki.ca.clone());
    let stack = Stack::start(|c| c.with_policy(&policy_text)?.with_tls(&server, &ca, false))
        .expect("stack");
    let mut policy = LoadedPolicy::load(&module, policy_text.as_bytes()).expect("loads");
    let mut disagreements = Vec::new();
    for case in &tests.cases {
        let identity = case.request.mtls.as_ref().map(|m| {
            let subject = m.subject.as_deref().unwrap_or("CN=workload");
            pki.client(&format!("/{subject}"), m.uri_san.as_deref())
                .unwrap()
        });
        let reply = celroute_tests::tls::https(
            stack.envoy.listener,
            &pki.ca,
            identity.as_ref(),
            case.request.path.as_deref().unwrap_or("/"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let in_envoy = observed(&reply);
        let in_host = through_policy_host(&mut policy, &case.request);
        let expected = Observed {
            outcome: match (&case.expect.cluster, case.expect.deny) {
                (Some(cluster), _) => format!("route {cluster}"),
                (None, Some(status)) => format!("deny {status}"),
                (None, None) => panic!("{}: expects nothing", case.name),
            },
            rule: case.expect.rule.clone().unwrap_or_default(),
        };
        if in_envoy != in_host || in_envoy != expected {
            disagreements.push(format!(
                "{}: Envoy {in_envoy:?}, policy-host {in_host:?}, expected {expected:?}",
                case.name
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
    assert!(tests.cases.len() >= 5);
}

/// With `require_client_certificate`, Envoy itself refuses a client without
/// a certificate at the handshake; one with a workload certificate is
/// routed by its identity.
#[test]
fn a_listener_requiring_client_certificates_refuses_anonymous_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = celroute_tests::tls::Pki::new(dir.path()).unwrap();
    let policy_text = read_policy("workload-identity.yaml").unwrap();
    let (server, ca) = (pki.server.clone(), pki.ca.clone());
    let stack =
        Stack::start(|c| c.with_policy(&policy_text)?.with_tls(&server, &ca, true)).expect("stack");
    let anonymous = celroute_tests::tls::https(stack.envoy.listener, &pki.ca, None, "/", &[]);
    assert!(anonymous.is_err(), "{anonymous:?}");
    let payments = pki
        .client(
            "/CN=checkout",
            Some("spiffe://corp.example/ns/payments/sa/checkout"),
        )
        .unwrap();
    let reply =
        celroute_tests::tls::https(stack.envoy.listener, &pki.ca, Some(&payments), "/", &[])
            .unwrap();
    assert_eq!(reply.cloud(), Some("gcp-europe-west4"), "{reply:?}");
}
