//! The signals feed: a JSON document an Envoy cluster serves, polled by the
//! filter. Format version 1 (`docs/signals-feed.schema.json`):
//!
//! ```json
//! {"version": 1,
//!  "clusters": {"aws-us-east-1": {"price_per_1k_tokens": 0.5, "maintenance": false}}}
//! ```
//!
//! Values are numbers, booleans or short strings; names are live field
//! names. Anything else makes the whole document rejected, so that the last
//! good values stay until they go stale.

use std::fmt;

use super::Signal;
use crate::engine::{is_field_name, BUILTIN_FIELDS};

pub const FEED_VERSION: u64 = 1;
/// Larger documents are rejected unread.
pub const MAX_FEED_BYTES: usize = 1024 * 1024;
const MAX_CLUSTERS: usize = 1024;
const MAX_VALUES_PER_CLUSTER: usize = 128;
const MAX_TEXT: usize = 256;

/// Why a feed document was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedError(pub String);

impl fmt::Display for FeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn error<T>(message: impl Into<String>) -> Result<T, FeedError> {
    Err(FeedError(message.into()))
}

/// Built-in fields the filter keeps itself: no feed or report may set them.
pub const OBSERVED: [&str; 6] = [
    "healthy",
    "breaker",
    "consecutive_failures",
    "in_flight",
    "latency_ms",
    "error_rate",
];

/// The CEL type of a built-in live field a feed may set (ints are counts the
/// filter keeps itself).
fn builtin_type(field: &str) -> Option<&'static str> {
    BUILTIN_FIELDS
        .iter()
        .find(|(name, _, _)| *name == field)
        .map(|(_, kind, _)| *kind)
}

/// The (cluster, field, value) triples of a feed document.
pub fn parse_feed(body: &[u8]) -> Result<Vec<(String, String, Signal)>, FeedError> {
    if body.len() > MAX_FEED_BYTES {
        return error(format!("{} bytes; at most {MAX_FEED_BYTES}", body.len()));
    }
    let document: serde_json::Value = match serde_json::from_slice(body) {
        Ok(d) => d,
        Err(e) => return error(format!("not JSON: {e}")),
    };
    let Some(object) = document.as_object() else {
        return error("the document is not a JSON object");
    };
    match object.get("version").and_then(serde_json::Value::as_u64) {
        Some(FEED_VERSION) => {}
        Some(other) => {
            return error(format!(
                "version {other}; this filter reads version {FEED_VERSION}"
            ))
        }
        None => return error("no \"version\" number"),
    }
    if let Some(key) = object
        .keys()
        .find(|k| !["version", "clusters"].contains(&k.as_str()))
    {
        return error(format!("unknown key \"{key}\""));
    }
    let Some(clusters) = object
        .get("clusters")
        .and_then(serde_json::Value::as_object)
    else {
        return error("no \"clusters\" object");
    };
    if clusters.len() > MAX_CLUSTERS {
        return error(format!(
            "{} clusters; at most {MAX_CLUSTERS}",
            clusters.len()
        ));
    }
    let mut out = Vec::new();
    for (cluster, values) in clusters {
        let Some(values) = values.as_object() else {
            return error(format!("clusters.{cluster} is not an object"));
        };
        if values.len() > MAX_VALUES_PER_CLUSTER {
            return error(format!(
                "clusters.{cluster}: {} values; at most {MAX_VALUES_PER_CLUSTER}",
                values.len()
            ));
        }
        for (field, value) in values {
            if !is_field_name(field) {
                return error(format!("clusters.{cluster}.{field}: not a field name"));
            }
            let signal = match value {
                serde_json::Value::Bool(b) => Signal::Bool(*b),
                serde_json::Value::Number(n) => match n.as_f64().filter(|v| v.is_finite()) {
                    Some(v) => Signal::Number(v),
                    None => return error(format!("clusters.{cluster}.{field}: not a finite number")),
                },
                serde_json::Value::String(s) if s.len() <= MAX_TEXT => Signal::Text(s.clone()),
                _ => {
                    return error(format!(
                        "clusters.{cluster}.{field}: not a number, boolean or string of at most {MAX_TEXT} bytes"
                    ))
                }
            };
            if OBSERVED.contains(&field.as_str()) {
                return error(format!(
                    "clusters.{cluster}.{field}: the filter keeps {field} from what it observes; a feed cannot set it"
                ));
            }
            if let Some(want) = builtin_type(field) {
                let got = match signal {
                    Signal::Bool(_) => "bool",
                    Signal::Number(_) => "double",
                    Signal::Text(_) => "string",
                };
                if got != want {
                    return error(format!(
                        "clusters.{cluster}.{field}: a {got}; the built-in field {field} is a {want}"
                    ));
                }
            }
            out.push((cluster.clone(), field.clone(), signal));
        }
    }
    Ok(out)
}
