//! Decision records: what a decision was and what it was made from, handed
//! to Envoy's access log (as filter state the shipped configs write out as
//! JSON lines) so that `policy-host replay` can decide the same requests
//! again under another policy. The schema is versioned ([`RECORD_VERSION`]);
//! `docs/decision-logs.md` lists its fields.
//!
//! A record holds the values of exactly the attributes the policy read, so
//! that a replay can tell which requests it can reconstruct and which it
//! cannot: a value that was not read, or was redacted, is never guessed.

use std::collections::BTreeSet;

use serde_json::{Map, Value as Json};

use super::attributes::{catalog_index, CATALOG};
pub use super::attributes::{header_path, ReadValues};
use super::cache::Served;
use super::decision::{Decision, Outcome};
use super::document::DecisionLogDocument;
use super::error::PolicyError;

/// The version of the record schema; a change that readers must know of
/// raises it.
pub const RECORD_VERSION: u64 = 1;

/// The property the decision record is set as: Envoy keeps it as the
/// filter state `wasm.celroute.decision`.
pub const DECISION_PROPERTY: &str = "celroute.decision";

/// The property a routed request's usage record is set as, when its
/// response ends (`wasm.celroute.usage`).
pub const USAGE_PROPERTY: &str = "celroute.usage";

/// `options.decision_log`, validated: which attributes are never recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionLog {
    /// Attribute paths in the form the records use: `source.address`,
    /// `request.headers['authorization']`, or `request.headers` for every header.
    pub(crate) redact: BTreeSet<String>,
}

impl DecisionLog {
    /// The decision log `document` asks for; each bad entry is recorded in `errors`.
    pub(crate) fn compile(
        document: Option<&DecisionLogDocument>,
        errors: &mut Vec<PolicyError>,
    ) -> Option<DecisionLog> {
        let document = document?;
        let mut redact = BTreeSet::new();
        for (i, path) in document.redact.iter().enumerate() {
            match attribute_path(path) {
                Some(path) => {
                    redact.insert(path);
                }
                None => errors.push(PolicyError::new(
                    format!("options.decision_log.redact[{i}]"),
                    format!(
                        "'{path}' is not an attribute: write request.<field>, source.<field>, \
                         destination.<field>, connection.<field> or request.headers['<name>']"
                    ),
                )),
            }
        }
        Some(DecisionLog { redact })
    }

    /// Whether the value at `path` (in record form) is kept out of records.
    pub fn redacts(&self, path: &str) -> bool {
        self.redact.contains(path)
            || (path.starts_with("request.headers[") && self.redact.contains("request.headers"))
    }
}

/// `path` in the form records use, when it names an attribute: header
/// names lower-cased, either quote accepted.
pub fn attribute_path(path: &str) -> Option<String> {
    let path = path.trim();
    if let Some(rest) = path.strip_prefix("request.headers[") {
        let name = rest
            .strip_suffix(']')
            .and_then(|q| {
                (q.strip_prefix('\'').and_then(|q| q.strip_suffix('\'')))
                    .or_else(|| q.strip_prefix('"').and_then(|q| q.strip_suffix('"')))
            })
            .filter(|name| !name.is_empty())?;
        return Some(header_path(&name.to_ascii_lowercase()));
    }
    let (root, field) = path.split_once('.')?;
    catalog_index(root, field).map(|_| format!("{root}.{field}"))
}

/// Every attribute path a record may hold outside the headers, for docs and tests.
pub fn recordable_attributes() -> impl Iterator<Item = String> {
    CATALOG
        .iter()
        .filter(|(root, field, _)| !(*root == "request" && *field == "headers"))
        .map(|(root, field, _)| format!("{root}.{field}"))
}

/// One decision's record (a JSON object on one line).
///
/// `live` is, for a policy that reads live state, the live fields it reads
/// and each cluster's values of them; `refused` the error code of a
/// request refused for its body.
/// `version` and `name` are the deciding policy's.
pub(crate) fn decision_record(
    (version, name): (&str, Option<&str>),
    decision: &Decision,
    served: Served,
    read: ReadValues,
    live: Option<(Vec<String>, Map<String, Json>)>,
    refused: Option<&str>,
) -> String {
    let mut record = Map::new();
    record.insert("v".into(), RECORD_VERSION.into());
    record.insert("policy".into(), version.into());
    if let Some(name) = name {
        record.insert("name".into(), name.into());
    }
    match &decision.outcome {
        Outcome::Route { cluster } => {
            record.insert("action".into(), "route".into());
            record.insert("cluster".into(), cluster.clone().into());
        }
        Outcome::Deny { status, .. } => {
            record.insert("action".into(), "deny".into());
            record.insert("status".into(), (*status).into());
        }
    }
    record.insert("rule".into(), decision.rule.clone().into());
    if let Some(fallback) = &decision.fallback {
        record.insert("fallback".into(), fallback.clone().into());
    }
    if !decision.errors.is_empty() {
        record.insert("errors".into(), decision.errors.len().into());
    }
    record.insert("cached".into(), (served == Served::FromCache).into());
    if let Some(code) = refused {
        record.insert("refused".into(), code.into());
    }
    record.insert("read".into(), Json::Object(read.values));
    if !read.redacted.is_empty() {
        record.insert("redacted".into(), read.redacted.into());
    }
    if let Some((fields, clusters)) = live {
        record.insert("live_fields".into(), fields.into());
        record.insert("live".into(), Json::Object(clusters));
    }
    Json::Object(record).to_string()
}

/// What a routed request used, recorded when its response ends.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct UsageRecord {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The price the tokens were charged at (per 1,000).
    pub price_per_1k_tokens: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Whether the response carried usage at all.
    pub reported: bool,
}

impl UsageRecord {
    /// The record as one JSON line (written directly: it is made for
    /// every routed response).
    pub fn to_json(&self, cluster: &str) -> String {
        let total = self.prompt_tokens + self.completion_tokens;
        let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
        let price = finite(self.price_per_1k_tokens);
        let cluster = serde_json::to_string(cluster).unwrap_or_else(|_| "\"\"".into());
        format!(
            "{{\"bytes_in\":{},\"bytes_out\":{},\"cluster\":{cluster},\"completion_tokens\":{},\"cost\":{:?},\"price_per_1k_tokens\":{price:?},\"prompt_tokens\":{},\"reported\":{},\"v\":{RECORD_VERSION}}}",
            self.bytes_in,
            self.bytes_out,
            self.completion_tokens,
            finite(total as f64 * price / 1000.0),
            self.prompt_tokens,
            self.reported,
        )
    }
}

/// A CEL value as JSON, for live values in records.
pub(crate) fn cel_json(value: &cel::Value) -> Json {
    match value {
        cel::Value::Int(n) => (*n).into(),
        cel::Value::UInt(n) => (*n).into(),
        cel::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        cel::Value::Bool(b) => (*b).into(),
        cel::Value::String(s) => s.as_str().into(),
        cel::Value::Null => Json::Null,
        other => format!("{other:?}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_paths_are_normalized_or_refused() {
        assert_eq!(
            attribute_path("request.headers[\"Authorization\"]").as_deref(),
            Some("request.headers['authorization']")
        );
        assert_eq!(
            attribute_path(" source.address ").as_deref(),
            Some("source.address")
        );
        assert_eq!(
            attribute_path("request.headers").as_deref(),
            Some("request.headers")
        );
        assert_eq!(attribute_path("request.hedaers['x']"), None);
        assert_eq!(attribute_path("request.headers['']"), None);
        assert_eq!(attribute_path("cluster.name"), None);
    }

    #[test]
    fn a_bad_redaction_names_its_place() {
        let mut errors = Vec::new();
        let document = DecisionLogDocument {
            redact: vec!["source.address".into(), "source.adress".into()],
        };
        let log = DecisionLog::compile(Some(&document), &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].location, "options.decision_log.redact[1]");
        assert!(errors[0].message.contains("'source.adress'"));
        assert!(log.is_some_and(|l| l.redacts("source.address")));
    }

    fn router(options: &str) -> super::super::Router {
        let text = format!(
            "name: p\nclusters: {{eu: {{j: eu}}, us: {{j: us}}}}\nrules:\n  - name: eu\n    when: request.headers[?'x-region'].orValue('') == 'eu' && source.address != ''\n    require: cluster.j == 'eu'\ndefault: us\noptions:\n  decision_log: {options}\n"
        );
        super::super::Router::new(super::super::Policy::load(&text).unwrap())
    }

    fn record(router: &super::super::Router, host: &mut dyn super::super::AttributeHost) -> Json {
        let decided = router.decide_recorded(host, false, true);
        serde_json::from_str(&decided.record.unwrap()).unwrap()
    }

    #[test]
    fn a_record_holds_the_decision_and_every_value_read_less_the_redacted() {
        use super::super::testing::TestHost;
        let logging = router("{}");
        let mut host = TestHost::with_headers(&[("x-region", "eu"), ("authorization", "k")])
            .property("source.address", b"10.1.2.3:4000");
        let first = record(&logging, &mut host);
        assert_eq!(first["v"], 1);
        assert_eq!(first["name"], "p");
        assert_eq!(first["action"], "route");
        assert_eq!(first["cluster"], "eu");
        assert_eq!(first["rule"], "first-candidate");
        assert_eq!(first["cached"], false);
        assert_eq!(first["policy"], logging.policy().version());
        assert_eq!(
            first["read"],
            serde_json::json!({"request.headers['x-region']": "eu", "source.address": "10.1.2.3:4000"}),
            "exactly what the policy read; the authorization header it did not read is not there"
        );
        let again = record(&logging, &mut host);
        assert_eq!(
            again["cached"], true,
            "the second decision comes from the cache"
        );

        let redacting = router("{redact: [source.address]}");
        let mut absent = TestHost::with_headers(&[]).property("source.address", b"10.1.2.3:4000");
        let record = record(&redacting, &mut absent);
        assert_eq!(
            record["read"],
            serde_json::json!({"request.headers['x-region']": null})
        );
        assert_eq!(record["redacted"], serde_json::json!(["source.address"]));
        assert_eq!(record["cluster"], "us");
    }

    #[test]
    fn without_a_decision_log_there_is_no_record() {
        use super::super::testing::TestHost;
        let text = "clusters: {a: {}}\n";
        let router = super::super::Router::new(super::super::Policy::load(text).unwrap());
        let decided = router.decide_recorded(&mut TestHost::with_headers(&[]), false, true);
        assert!(decided.record.is_none());
        assert!(!router.policy().counts_usage());
    }

    #[test]
    fn a_usage_record_is_json_with_every_field() {
        let record = UsageRecord {
            prompt_tokens: 10,
            completion_tokens: 30,
            price_per_1k_tokens: 0.5,
            bytes_in: 100,
            bytes_out: 2000,
            reported: true,
        };
        let json: Json = serde_json::from_str(&record.to_json("a\"b")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v": 1, "cluster": "a\"b", "reported": true, "prompt_tokens": 10,
                "completion_tokens": 30, "price_per_1k_tokens": 0.5, "cost": 0.02,
                "bytes_in": 100, "bytes_out": 2000})
        );
        let nan = UsageRecord {
            price_per_1k_tokens: f64::NAN,
            ..record
        };
        let json: Json = serde_json::from_str(&nan.to_json("a")).unwrap();
        assert_eq!(json["cost"], 0.0);
    }
}
