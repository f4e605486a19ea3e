//! A logged request rebuilt from its decision record: the attributes it
//! records become the headers, body, addresses and properties of a request
//! the filter reads exactly as it read the original.

use std::collections::BTreeSet;

use celroute::engine::PolicyDescription;
use serde_json::{Map, Value as Json};

use crate::request::{BodySpec, Headers, RequestSpec};

/// A request rebuilt from a record, and what the record knew of it.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub spec: RequestSpec,
    /// Attribute paths recorded (with or without a value).
    known: BTreeSet<String>,
    /// Every header was recorded (the logging policy read the whole map).
    all_headers: bool,
    redacted: BTreeSet<String>,
    /// The body was refused, so it is not in the record.
    refused: bool,
    /// The live fields the logging policy read, and each cluster's values
    /// of them, when it read live state.
    live_fields: Option<BTreeSet<String>>,
    pub live: Option<Map<String, Json>>,
}

/// Paths that are known whenever another one is: `(path, implied by)`.
const IMPLIED: &[(&str, &str)] = &[
    ("request.url_path", "request.path"),
    ("request.query", "request.path"),
    ("source.port", "source.address"),
    ("destination.port", "destination.address"),
    ("request.referer", "request.headers['referer']"),
    ("request.useragent", "request.headers['user-agent']"),
    ("request.id", "request.headers['x-request-id']"),
    ("request.headers['referer']", "request.referer"),
    ("request.headers['user-agent']", "request.useragent"),
    ("request.headers['x-request-id']", "request.id"),
];

impl Rebuilt {
    /// Why a policy that reads what `description` says cannot be replayed
    /// on this request, if it cannot.
    pub fn missing_for(&self, description: &PolicyDescription) -> Option<String> {
        if let Some(budget) = description.reads_budgets.first() {
            return Some(format!(
                "the policy reads budget.{budget}, which a replay cannot restore"
            ));
        }
        if description.reads_live {
            let Some(recorded) = &self.live_fields else {
                return Some("the policy reads live cluster state, which was not recorded".into());
            };
            if let Some(field) =
                (description.live_fields_read.iter()).find(|f| !recorded.contains(*f))
            {
                return Some(format!("cluster.live.{field} was not recorded"));
            }
        }
        description
            .reads
            .iter()
            .find(|path| !self.knows(path))
            .map(|path| {
                if self.redacted.contains(path.as_str())
                    || (path.starts_with("request.headers[")
                        && self.redacted.contains("request.headers"))
                {
                    format!("{path} was redacted")
                } else if path == "request.body" && self.refused {
                    "the body was refused, so it is not in the record".into()
                } else {
                    format!("{path} was not recorded")
                }
            })
    }

    fn knows(&self, path: &str) -> bool {
        if self.redacted.contains(path) {
            return false;
        }
        if self.known.contains(path) {
            return true;
        }
        if path.starts_with("request.headers[") && self.all_headers {
            return !self.redacted.contains("request.headers");
        }
        if path == "request.path" {
            return self.known.contains("request.url_path") && self.known.contains("request.query");
        }
        IMPLIED
            .iter()
            .any(|(p, by)| *p == path && self.known.contains(*by))
    }
}

/// Rebuilds the request a record describes.
pub fn rebuild(record: &Map<String, Json>) -> Result<Rebuilt, String> {
    let empty = Map::new();
    let read = match record.get("read") {
        Some(Json::Object(read)) => read,
        None => &empty,
        Some(_) => return Err("the record's `read` is not an object".into()),
    };
    let mut rebuilt = Rebuilt {
        spec: RequestSpec::default(),
        known: read.keys().cloned().collect(),
        all_headers: read.contains_key("request.headers"),
        redacted: (record.get("redacted").and_then(Json::as_array))
            .map(|paths| {
                (paths.iter())
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        refused: record.contains_key("refused"),
        live_fields: (record.get("live_fields").and_then(Json::as_array)).map(|fields| {
            (fields.iter())
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        }),
        live: record.get("live").and_then(Json::as_object).cloned(),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut path = None;
    let (mut url_path, mut query) = (None, None);
    let spec = &mut rebuilt.spec;
    for (key, value) in read {
        let text = value.as_str().map(str::to_string);
        if let Some(name) = header_name(key) {
            if let Some(text) = text {
                headers.push((name.to_string(), text));
            }
            continue;
        }
        match key.as_str() {
            "request.headers" => {
                for (name, value) in value.as_object().into_iter().flatten() {
                    if let Some(text) = value.as_str() {
                        headers.push((name.clone(), text.to_string()));
                    }
                }
            }
            "request.path" => path = text,
            "request.url_path" => url_path = text,
            "request.query" => query = text,
            "request.host" => spec.host = text,
            "request.method" => spec.method = text,
            "request.scheme" => spec.scheme = text,
            "request.referer" => push_header(&mut headers, "referer", text),
            "request.useragent" => push_header(&mut headers, "user-agent", text),
            "request.id" => push_header(&mut headers, "x-request-id", text),
            "source.address" => spec.source = text,
            "destination.address" => spec.destination = text,
            "request.body" => spec.body = value.as_object().map(body_for),
            "request.time" => {
                let nanos = text
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .and_then(|t| t.timestamp_nanos_opt());
                given(spec, key, nanos.map(|n| n.to_le_bytes().to_vec()));
            }
            "source.port" | "destination.port" => {
                let bytes = value.as_i64().map(|n| n.to_le_bytes().to_vec());
                given(spec, key, bytes);
            }
            "connection.id" => {
                let bytes = value.as_u64().map(|n| n.to_le_bytes().to_vec());
                given(spec, key, bytes);
            }
            "connection.mtls" => {
                let bytes = value.as_bool().map(|b| vec![u8::from(b)]);
                given(spec, key, bytes);
            }
            _ if key.starts_with("budget.") => {}
            _ if key.starts_with("request.") || key.starts_with("connection.") => {
                given(spec, key, text.map(String::into_bytes));
            }
            _ => return Err(format!("the record reads an unknown attribute '{key}'")),
        }
    }
    spec.path = path.or_else(|| {
        url_path.map(|p| match query.filter(|q| !q.is_empty()) {
            Some(q) => format!("{p}?{q}"),
            None => p,
        })
    });
    // The body is sent as JSON, which its summary was read from.
    if spec.body.is_some() && !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    spec.headers = Headers::List(headers);
    Ok(rebuilt)
}

/// `name` of `request.headers['name']`.
fn header_name(path: &str) -> Option<&str> {
    path.strip_prefix("request.headers['")?.strip_suffix("']")
}

fn push_header(headers: &mut Vec<(String, String)>, name: &str, value: Option<String>) {
    if let Some(value) = value {
        if !headers.iter().any(|(k, _)| k == name) {
            headers.push((name.to_string(), value));
        }
    }
}

/// A property answered as recorded (`None`: it was absent).
fn given(spec: &mut RequestSpec, path: &str, value: Option<Vec<u8>>) {
    let path = path.split('.').map(str::to_string).collect();
    spec.properties.push((path, value));
}

/// A JSON body whose summary is `summary`: the fields it names, the
/// messages or inputs counted, padded with spaces to the recorded size.
fn body_for(summary: &Map<String, Json>) -> BodySpec {
    let mut body = Map::new();
    for key in ["model", "stream", "max_tokens"] {
        if let Some(value) = summary.get(key) {
            body.insert(key.into(), value.clone());
        }
    }
    let count = |key: &str| summary.get(key).and_then(Json::as_u64).unwrap_or(0) as usize;
    if summary.contains_key("messages") {
        body.insert(
            "messages".into(),
            Json::Array(vec![Json::Object(Map::new()); count("messages")]),
        );
    }
    if summary.contains_key("inputs") {
        body.insert(
            "input".into(),
            Json::Array(vec![Json::String(String::new()); count("inputs")]),
        );
    }
    let mut text = Json::Object(body).to_string();
    let size = summary.get("size").and_then(Json::as_u64).unwrap_or(0) as usize;
    if text.len() < size {
        text.push_str(&" ".repeat(size - text.len()));
    }
    BodySpec::Text(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use celroute::engine::BodySummary;

    #[test]
    fn a_body_is_rebuilt_to_the_same_summary() {
        let original = br#"{"model":"o3-mini","max_tokens":9000,"stream":true,"messages":[{"role":"user","content":"hello there"},{"role":"assistant","content":"hi"}]}"#;
        let summary = BodySummary::read(original, Some(b"application/json")).unwrap();
        let recorded: Map<String, Json> = serde_json::from_slice(&summary.encode()).unwrap();
        let rebuilt = body_for(&recorded).text();
        let again = BodySummary::read(rebuilt.as_bytes(), Some(b"application/json")).unwrap();
        assert_eq!(again, summary);
    }

    #[test]
    fn paths_implied_by_others_are_known() {
        let record: Map<String, Json> = serde_json::from_str(
            r#"{"read":{"request.path":"/v1/x?a=1","source.address":"10.0.0.1:5000",
                "request.headers['x-tenant']":null},"redacted":["request.headers['authorization']"]}"#,
        )
        .unwrap();
        let rebuilt = rebuild(&record).unwrap();
        assert!(rebuilt.knows("request.query"));
        assert!(rebuilt.knows("source.port"));
        assert!(rebuilt.knows("request.headers['x-tenant']"));
        assert!(!rebuilt.knows("request.headers['authorization']"));
        assert!(!rebuilt.knows("request.headers['x-user-region']"));
        assert_eq!(rebuilt.spec.path.as_deref(), Some("/v1/x?a=1"));
        assert_eq!(rebuilt.spec.header_pairs(), Vec::<(String, String)>::new());
    }
}
