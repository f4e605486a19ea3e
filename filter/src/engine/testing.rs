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
