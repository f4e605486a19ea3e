//! The request body as a policy sees it: `request.body.*`, a few fields of
//! an OpenAI-style JSON body (model, stream, max_tokens, the number of
//! messages or inputs, the size), extracted once when the body is complete.
//!
//! A policy that reads none of them never makes the filter wait for a body.
//! One that does makes it hold the request until the body is complete, up to
//! a limit; what a body that cannot be read gets is decided here, as a
//! [`BodyError`] with the status and error code the client sees.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use serde::{Deserialize, Serialize};

use super::decision::{Decision, Outcome};

/// Default for `options.max_body_bytes`: under Envoy's default per-connection
/// buffer limit (1 MiB), so that the filter, not Envoy, answers a body over it.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1_000_000;

/// Upper bound for `options.max_body_bytes`: each request held holds its body.
pub const MAX_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// The fields of `request.body`, for analysis and did-you-mean.
pub(crate) const BODY_FIELDS: &[&str] = &[
    "model",
    "stream",
    "max_tokens",
    "messages",
    "inputs",
    "size",
];

/// What a policy can read of the body. Serialized, it is the attribute's
/// raw value (and so part of the decision cache key): field order is fixed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BodySummary {
    /// `model`, when the body names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `stream`; false when the body does not say (the API's default).
    pub stream: bool,
    /// `max_tokens`, else `max_completion_tokens`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// The number of `messages`, when the body has a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<i64>,
    /// The number of embedding inputs: 1 for a string, the length of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<i64>,
    /// Bytes in the body.
    pub size: u64,
}

/// Why a body cannot be read, and what the client is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    pub status: u16,
    /// OpenAI-style error code, such as `invalid_json`.
    pub code: &'static str,
    pub message: String,
}

impl BodyError {
    /// The decision for a request refused for its body: a denial by the
    /// reserved rule `request-body`, logged and counted as any other.
    pub fn decision(&self) -> Decision {
        Decision {
            outcome: Outcome::Deny {
                status: self.status,
                message: self.message.clone(),
            },
            rule: BODY_RULE.to_string(),
            fallback: None,
            errors: Vec::new(),
            trace: None,
        }
    }
}

/// The rule name of a decision refused for its body.
pub const BODY_RULE: &str = "request-body";

/// The fields of an OpenAI-style request body celroute reads; every other
/// field is skipped without being kept.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
    #[serde(default)]
    messages: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(default)]
    input: Option<serde_json::Value>,
}

impl BodySummary {
    /// The summary of a request without a body (a GET, or an empty POST).
    pub fn empty() -> BodySummary {
        BodySummary::default()
    }

    /// Reads a complete body. `content_type` is the request's header, if any:
    /// a body that is not declared JSON is refused (415) rather than guessed
    /// at, and a body that is not a JSON object is a 400.
    pub fn read(body: &[u8], content_type: Option<&[u8]>) -> Result<BodySummary, BodyError> {
        if body.is_empty() {
            return Ok(BodySummary::empty());
        }
        if !content_type.is_some_and(is_json) {
            let shown = content_type
                .map(|c| format!("'{}'", String::from_utf8_lossy(c)))
                .unwrap_or_else(|| "none".to_string());
            return Err(BodyError {
                status: 415,
                code: "unsupported_media_type",
                message: format!(
                    "the routing policy reads the request body, which must be JSON (content-type application/json); content-type is {shown}"
                ),
            });
        }
        // serde would also read a struct from a JSON array.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(BodyError {
                status: 400,
                code: "invalid_json",
                message: "the request body is not a JSON object".to_string(),
            });
        }
        let wire: Wire = serde_json::from_slice(body).map_err(|e| BodyError {
            status: 400,
            code: "invalid_json",
            message: format!("the request body is not a JSON object: {e}"),
        })?;
        let invalid = |field: &str, expected: &str| BodyError {
            status: 400,
            code: "invalid_request_body",
            message: format!("the request body's '{field}' is not {expected}"),
        };
        let model = match wire.model {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => return Err(invalid("model", "a string")),
        };
        let stream = match wire.stream {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => b,
            Some(_) => return Err(invalid("stream", "true or false")),
        };
        let integer = |field: &str, v: Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| invalid(field, "an integer")),
            Some(_) => Err(invalid(field, "an integer")),
        };
        let max_tokens = match integer("max_tokens", wire.max_tokens)? {
            Some(n) => Some(n),
            None => integer("max_completion_tokens", wire.max_completion_tokens)?,
        };
        let inputs = match wire.input {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Array(items)) => Some(items.len() as i64),
            Some(_) => Some(1),
        };
        Ok(BodySummary {
            model,
            stream,
            max_tokens,
            messages: wire.messages.map(|m| m.len() as i64),
            inputs,
            size: body.len() as u64,
        })
    }

    /// The error for a body over `limit` bytes.
    pub fn too_large(limit: u64) -> BodyError {
        BodyError {
            status: 413,
            code: "request_too_large",
            message: format!(
                "the request body is over the {limit} bytes the routing policy reads (options.max_body_bytes)"
            ),
        }
    }

    /// The attribute's raw value.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `request.body` as CEL sees it: only the fields that are present.
    pub(crate) fn decode(raw: &[u8]) -> Option<Value> {
        let summary: BodySummary = serde_json::from_slice(raw).ok()?;
        let mut map: HashMap<Key, Value> = HashMap::new();
        let mut put = |k: &str, v: Value| {
            map.insert(Key::String(Arc::new(k.to_string())), v);
        };
        if let Some(model) = summary.model {
            put("model", Value::String(Arc::new(model)));
        }
        put("stream", Value::Bool(summary.stream));
        if let Some(n) = summary.max_tokens {
            put("max_tokens", Value::Int(n));
        }
        if let Some(n) = summary.messages {
            put("messages", Value::Int(n));
        }
        if let Some(n) = summary.inputs {
            put("inputs", Value::Int(n));
        }
        put(
            "size",
            Value::Int(i64::try_from(summary.size).unwrap_or(i64::MAX)),
        );
        Some(Value::Map(Map { map: Arc::new(map) }))
    }
}

/// `application/json`, or a `+json` type, with any parameters.
fn is_json(content_type: &[u8]) -> bool {
    let text = String::from_utf8_lossy(content_type).to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or_default().trim();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&[u8]> = Some(b"application/json; charset=utf-8");

    #[test]
    fn reads_a_chat_completion() {
        let body = br#"{"model":"o3-mini","stream":true,"max_completion_tokens":50,
            "messages":[{"role":"user","content":"hi"},{"role":"user","content":"again"}],
            "tools":[{"deeply":{"nested":[1,2,3]}}]}"#;
        let s = BodySummary::read(body, JSON).unwrap();
        assert_eq!(s.model.as_deref(), Some("o3-mini"));
        assert!(s.stream);
        assert_eq!(s.max_tokens, Some(50));
        assert_eq!(s.messages, Some(2));
        assert_eq!(s.inputs, None);
        assert_eq!(s.size, body.len() as u64);
    }

    #[test]
    fn reads_an_embedding_request() {
        let s = BodySummary::read(br#"{"model":"bge","input":["a","b","c"]}"#, JSON).unwrap();
        assert_eq!((s.inputs, s.stream, s.messages), (Some(3), false, None));
        let s = BodySummary::read(br#"{"model":"bge","input":"a"}"#, JSON).unwrap();
        assert_eq!(s.inputs, Some(1));
    }

    #[test]
    fn refuses_what_it_cannot_read_with_a_status() {
        let status =
            |body: &[u8], ct: Option<&[u8]>| BodySummary::read(body, ct).unwrap_err().status;
        assert_eq!(status(b"{\"model\":", JSON), 400, "truncated");
        assert_eq!(status(b"[1,2]", JSON), 400, "not an object");
        assert_eq!(
            status(b"model=x", Some(b"application/x-www-form-urlencoded")),
            415
        );
        assert_eq!(status(b"{}", None), 415, "no content type");
        assert_eq!(status(br#"{"model":7}"#, JSON), 400);
        assert_eq!(status(br#"{"stream":"yes"}"#, JSON), 400);
        assert_eq!(status(br#"{"max_tokens":1.5}"#, JSON), 400);
        let e = BodySummary::read(b"{\"model\":", JSON).unwrap_err();
        assert!(e.message.contains("EOF"), "{}", e.message);
        assert_eq!(BodySummary::too_large(10).status, 413);
    }

    #[test]
    fn an_empty_body_needs_no_content_type() {
        assert_eq!(BodySummary::read(b"", None).unwrap(), BodySummary::empty());
        assert!(is_json(b"application/vnd.api+json"));
        assert!(!is_json(b"text/plain"));
    }

    #[test]
    fn decodes_only_present_fields() {
        let s = BodySummary::read(br#"{"model":"m"}"#, JSON).unwrap();
        let Some(Value::Map(m)) = BodySummary::decode(&s.encode()) else {
            panic!("a map")
        };
        assert_eq!(m.map.len(), 3, "model, stream, size: {:?}", m.map);
    }
}
