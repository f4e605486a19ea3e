//! The host the engine's tests and benchmarks use: fixed headers and
//! properties, answering as Envoy does (the first value of a repeated
//! header), and recording every lookup unless told not to.

use std::collections::BTreeMap;

use super::attributes::AttributeHost;

/// A host with fixed headers and properties.
#[derive(Default, Clone)]
pub struct TestHost {
    headers: Vec<(String, Vec<u8>)>,
    properties: BTreeMap<String, Vec<u8>>,
    /// Every lookup, as `header:NAME`, `headers:*` or `property:PATH`.
    pub lookups: Vec<String>,
    /// Lookups are not recorded (for benchmarks).
    quiet: bool,
    /// What the request's key has spent, by budget name.
    spent: BTreeMap<String, f64>,
}

impl TestHost {
    /// A host whose request has these headers, in this order.
    pub fn with_headers(headers: &[(&str, &str)]) -> TestHost {
        TestHost::with_header_bytes(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// The same, from owned names and values.
    pub fn with_header_bytes(headers: Vec<(String, Vec<u8>)>) -> TestHost {
        TestHost {
            headers,
            ..TestHost::default()
        }
    }

    /// Adds a property, by its dotted path (`source.address`), in its host encoding.
    pub fn property(mut self, path: &str, value: &[u8]) -> TestHost {
        self.properties.insert(path.to_string(), value.to_vec());
        self
    }

    /// Sets what the request's key has spent of the budget `name`.
    pub fn spent(mut self, name: &str, amount: f64) -> TestHost {
        self.spent.insert(name.to_string(), amount);
        self
    }

    /// The request's body, as the adapter gives it once complete.
    pub fn body(self, body: &crate::engine::BodySummary) -> TestHost {
        self.property("request.body", &body.encode())
    }

    /// Stops recording lookups, which would otherwise cost a benchmark more than a decision.
    pub fn quiet(mut self) -> TestHost {
        self.quiet = true;
        self
    }

    fn record(&mut self, lookup: impl FnOnce() -> String) {
        if !self.quiet {
            self.lookups.push(lookup());
        }
    }
}

impl AttributeHost for TestHost {
    fn budget_spent(&mut self, name: &str) -> f64 {
        self.record(|| format!("budget:{name}"));
        self.spent.get(name).copied().unwrap_or(0.0)
    }
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.record(|| format!("header:{name}"));
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)> {
        self.record(|| "headers:*".to_string());
        self.headers.clone()
    }
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let key = path.join(".");
        self.record(|| format!("property:{key}"));
        self.properties.get(&key).cloned()
    }
}

/// What the fuzz targets run (`fuzz/fuzz_targets/`), and the tests that
/// replay their corpus run the same: each takes arbitrary bytes and must
/// neither panic nor break a routing invariant. A panic here is how a fuzz
/// target reports a bug.
#[allow(clippy::panic)]
pub mod fuzz {
    use super::TestHost;
    use crate::engine::{Outcome, Policy};

    /// A policy that reads every kind of attribute: headers by name and as a
    /// whole map, strings, integers, booleans, timestamps.
    const READS_EVERYTHING: &str = r#"
clusters:
  eu-a: {region: eu, price: 3, tags: [gpu, large]}
  eu-b: {region: eu, price: 1}
  us-a: {region: us, price: 2, tags: [gpu]}
rules:
  - name: residency
    when: request.headers[?'x-user-region'].orValue('') == 'eu'
    require: cluster.region == 'eu'
  - name: internal-only
    when: "!source.address.startsWith('10.') && request.path.startsWith('/admin')"
    deny: {status: 403}
  - name: tls
    when: connection.mtls && connection.uri_san_peer_certificate.endsWith('/payments')
    require: cluster.region == 'eu'
  - name: port
    when: destination.port == 8443 || source.port > 60000
    prefer: [us-a]
  - name: many-headers
    when: size(request.headers) > 20 || request.headers.exists(h, h.startsWith('x-debug'))
    order_by: cluster.price
    descending: true
  - name: tenant
    when: request.headers['x-tenant'].matches('^[a-z]+$') && request.time > timestamp('2020-01-01T00:00:00Z')
    order_by: cluster.price
  - name: budget
    when: "'x-budget' in request.headers"
    require: int(request.headers['x-budget']) >= cluster.price
default: eu-a
"#;

    /// The policy loader: YAML or JSON text, with CEL inside.
    pub fn load(data: &[u8]) {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(policy) = Policy::load(text) {
                check(&policy, &mut TestHost::default());
            }
        }
    }

    /// One CEL expression, as a `require` and as a `when`: parsing, the
    /// load-time checks, the cost estimate and, if it loads, evaluation.
    pub fn expression(data: &[u8]) {
        let Ok(source) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(quoted) = serde_json::to_string(source) else {
            return;
        };
        for field in ["require", "when"] {
            let action = if field == "when" {
                "\n    prefer: [b]"
            } else {
                ""
            };
            let text = format!(
                "clusters:\n  a: {{region: eu, price: 2, tags: [x]}}\n  b: {{region: us, price: 1}}\nrules:\n  - name: r\n    {field}: {quoted}{action}\n"
            );
            if let Ok(policy) = Policy::load(&text) {
                let mut host = request(b"x-user-region\0eu\0x-tenant\0acme");
                check(&policy, &mut host);
            }
        }
    }

    /// The decision path with arbitrary attribute values: header names and
    /// values, and the properties' raw bytes (of any length), from `data`.
    pub fn decide(data: &[u8]) {
        thread_local! {
            static POLICY: Policy = match Policy::load(READS_EVERYTHING) {
                Ok(policy) => policy,
                Err(e) => panic!("the fuzzing policy must load: {e}"),
            };
        }
        let mut host = request(data);
        let decision = POLICY.with(|policy| check(policy, &mut host));
        // The residency rule: an EU user is never routed outside the EU.
        let eu_user = host_header(data, b"x-user-region").is_some_and(|v| v == b"eu");
        if let (true, Some(cluster)) = (eu_user, decision) {
            assert!(cluster.starts_with("eu-"), "EU user routed to {cluster}");
        }
    }

    /// NUL-separated name, value pairs.
    fn pairs(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut parts = data.split(|b| *b == 0);
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// A request from bytes: name, value pairs (`pairs`) for headers;
    /// a pair whose name starts with '@' sets a property (`@source.port`).
    fn request(data: &[u8]) -> TestHost {
        let mut headers = Vec::new();
        let mut properties = Vec::new();
        for (name, value) in pairs(data) {
            match name.strip_prefix(b"@") {
                Some(path) => properties.push((String::from_utf8_lossy(path).into_owned(), value)),
                None => headers.push((
                    String::from_utf8_lossy(name).to_ascii_lowercase(),
                    value.to_vec(),
                )),
            }
        }
        let mut host = TestHost::with_header_bytes(headers).quiet();
        for (path, value) in properties {
            host = host.property(&path, value);
        }
        host
    }

    /// The first value of header `name` in the request `data` describes.
    fn host_header<'a>(data: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        pairs(data)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Decides, and checks what holds for any decision: a routed cluster is
    /// in the inventory, a denial has an HTTP status. Returns the cluster.
    fn check(policy: &Policy, host: &mut TestHost) -> Option<String> {
        let decision = policy.decide(host, true);
        match &decision.outcome {
            Outcome::Route { cluster } => {
                assert!(
                    policy.cluster_names().any(|c| c == cluster),
                    "routed to {cluster}, not in the inventory"
                );
                Some(cluster.clone())
            }
            Outcome::Deny { status, .. } => {
                assert!((200..=599).contains(status), "denial status {status}");
                None
            }
        }
    }

    /// The inference parsers: a request body as a policy reads it (first
    /// byte even), or a response body scanned for usage, as JSON or as a
    /// stream, which must give the same usage wherever it is cut.
    pub fn inference(data: &[u8]) {
        use crate::usage::{Framing, UsageScanner};
        let Some((&kind, rest)) = data.split_first() else {
            return;
        };
        if kind % 2 == 0 {
            let content_type: &[u8] = if kind % 4 == 0 {
                b"application/json"
            } else {
                b"text/plain"
            };
            if let Ok(summary) = crate::engine::BodySummary::read(rest, Some(content_type)) {
                assert_eq!(summary.size, rest.len() as u64);
                assert!(crate::engine::BodySummary::decode(&summary.encode()).is_some());
            }
            return;
        }
        let framing = if kind % 4 == 1 {
            Framing::Json
        } else {
            Framing::EventStream
        };
        let mut whole = UsageScanner::new(framing);
        whole.feed(rest);
        let at = usize::from(kind) * 7 % (rest.len() + 1);
        let mut cut = UsageScanner::new(framing);
        cut.feed(&rest[..at]);
        cut.feed(&rest[at..]);
        assert_eq!(whole.usage(), cut.usage(), "cut at {at}");
    }

    /// The live-signal parsers and the shared record: a feed document, an
    /// ORCA header, a shared-data record merged with observations, or
    /// Prometheus metrics, the first byte choosing which.
    pub fn signals(data: &[u8]) {
        use crate::signals::{
            parse_feed, parse_metrics, parse_orca, snapshot, ClusterState, Completion, Pending,
            Signal,
        };
        let Some((&kind, rest)) = data.split_first() else {
            return;
        };
        match kind % 4 {
            3 => {
                let wanted = crate::engine::default_scrape_metrics();
                for (field, value) in parse_metrics(&String::from_utf8_lossy(rest), &wanted) {
                    assert!(wanted.iter().any(|(f, _)| *f == field));
                    assert!(matches!(value, Signal::Number(n) if n.is_finite()));
                }
            }
            0 => {
                if let Ok(values) = parse_feed(rest) {
                    for (_, field, value) in values {
                        assert!(crate::engine::is_field_name(&field), "{field}");
                        assert!(!crate::signals::feed::OBSERVED.contains(&field.as_str()));
                        if let Signal::Number(n) = value {
                            assert!(n.is_finite());
                        }
                    }
                }
            }
            1 => {
                for (field, value) in parse_orca(&String::from_utf8_lossy(rest)) {
                    assert!(crate::engine::is_field_name(&field), "{field}");
                    assert!(matches!(value, Signal::Number(n) if n.is_finite()));
                }
            }
            _ => {
                // A record as another worker (or anything) left it, then this
                // worker's observations, derived from the same bytes.
                let mut state = ClusterState::from_bytes(Some(rest));
                let mut pending = Pending::default();
                for (i, byte) in rest.iter().take(64).enumerate() {
                    let at = u64::from(*byte) * 97 + i as u64;
                    match byte % 4 {
                        0 => pending.started("c"),
                        1 => pending.finished(
                            "c",
                            Completion {
                                failed: byte % 8 == 1,
                                latency_ms: Some(f64::from(*byte)),
                                at,
                            },
                        ),
                        2 => pending.abandoned("c"),
                        _ => {
                            pending.report("c", "queue_depth", Signal::Number(f64::from(*byte)), at)
                        }
                    }
                }
                for (_, p) in pending.take() {
                    state.merge(&p, 10_000);
                }
                assert!(state.in_flight >= 0);
                let options = crate::engine::LiveOptions::default();
                let now = u64::from(rest.first().copied().unwrap_or(0)) * 1000;
                let live = snapshot([("c", &state)], &options, now);
                assert!(live.clusters["c"].contains_key("healthy"));
                // The record survives its trip through shared data (JSON
                // floats to within rounding).
                let back = ClusterState::from_bytes(Some(&state.to_bytes()));
                let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    (a, b) => a.is_none() && b.is_none(),
                };
                assert!(close(
                    back.latency_ms.map(|t| t.value),
                    state.latency_ms.map(|t| t.value)
                ));
                assert!(close(
                    back.error_rate.map(|t| t.value),
                    state.error_rate.map(|t| t.value)
                ));
                assert_eq!(
                    (
                        back.consecutive_failures,
                        back.in_flight,
                        back.reported.len()
                    ),
                    (
                        state.consecutive_failures,
                        state.in_flight,
                        state.reported.len()
                    )
                );
            }
        }
    }
}

/// The CEL environment policies are compiled and run in.
pub fn policy_env() -> cel::Env {
    super::analysis::policy_env()
}
