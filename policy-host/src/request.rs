//! A simulated request as a test file or the command line describes it;
//! `exchange.rs` turns it into what Envoy presents to a filter.

use indexmap::IndexMap;
use serde::Deserialize;

/// A request as a test file or the command line describes it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Path with optional query; default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// `:authority`; default `celroute.test`.
    #[serde(default, alias = "authority")]
    pub host: Option<String>,
    /// Default `http`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// A map, or a list of `[name, value]` pairs to repeat a header.
    #[serde(default)]
    pub headers: Headers,
    /// Client address, `ip:port` (`[::1]:5000` for IPv6); default `127.0.0.1:50000`.
    #[serde(default)]
    pub source: Option<String>,
    /// Listener address; default `127.0.0.1:10000`.
    #[serde(default)]
    pub destination: Option<String>,
    /// The client's TLS identity; absent for plaintext.
    #[serde(default)]
    pub mtls: Option<MtlsSpec>,
    /// The request body: text as given, or a mapping or list sent as JSON
    /// (with `content-type: application/json` unless the headers name one).
    #[serde(default)]
    pub body: Option<BodySpec>,
    /// Properties answered as given (`None`: not found), before those the
    /// request implies: dynamic metadata (`metadata.filter_metadata.NS.KEY`),
    /// filter state, or what a request cannot carry, such as `request.time`
    /// or `connection.id`, when a replay restores them. In a file, a list of
    /// `{path, value}`: the path a list of segments (or a dotted string when
    /// no segment holds a dot); the value a string (its bytes), an integer
    /// (8 bytes little-endian), a bool (one byte), or null (not found), as
    /// Envoy encodes them.
    #[serde(default, deserialize_with = "given_properties")]
    pub properties: Vec<GivenValue>,
}

/// A property path and the value it is answered with (`None`: not found).
pub type GivenValue = (Vec<String>, Option<Vec<u8>>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenProperty {
    path: PropertyPath,
    value: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyPath {
    Dotted(String),
    Segments(Vec<String>),
}

fn given_properties<'de, D>(deserializer: D) -> Result<Vec<GivenValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    let given = Vec::<GivenProperty>::deserialize(deserializer)?;
    given
        .into_iter()
        .map(|p| {
            let path = match p.path {
                PropertyPath::Dotted(text) => text.split('.').map(str::to_string).collect(),
                PropertyPath::Segments(segments) => segments,
            };
            let name = path.join(".");
            if path.is_empty() || path.iter().any(String::is_empty) {
                return Err(D::Error::custom(format!(
                    "property '{name}': an empty path segment"
                )));
            }
            let value = match p.value {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.into_bytes()),
                serde_json::Value::Bool(b) => Some(vec![u8::from(b)]),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Some(i.to_le_bytes().to_vec()),
                    None => {
                        return Err(D::Error::custom(format!(
                        "property '{name}': {n} is not an integer (give other values as strings)"
                    )))
                    }
                },
                other => {
                    return Err(D::Error::custom(format!(
                        "property '{name}': {other} is not a string, integer, bool or null"
                    )))
                }
            };
            Ok((path, value))
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BodySpec {
    Text(String),
    Json(serde_json::Value),
}

impl RequestSpec {
    /// The request's headers as sent: those given, and `content-type` for
    /// a JSON body when they name none.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = self.headers.pairs();
        let content_type = self.body.as_ref().and_then(BodySpec::content_type);
        if let Some(content_type) = content_type {
            if !pairs
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                pairs.push(("content-type".into(), content_type.into()));
            }
        }
        pairs
    }
}

impl BodySpec {
    /// The bytes sent.
    pub fn text(&self) -> String {
        match self {
            BodySpec::Text(text) => text.clone(),
            BodySpec::Json(value) => value.to_string(),
        }
    }

    /// The content type a request with this body gets when its headers name none.
    pub fn content_type(&self) -> Option<&'static str> {
        matches!(self, BodySpec::Json(_)).then_some("application/json")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Headers {
    Map(IndexMap<String, String>),
    List(Vec<(String, String)>),
}

impl Default for Headers {
    fn default() -> Headers {
        Headers::List(Vec::new())
    }
}

impl Headers {
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            Headers::Map(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Headers::List(list) => list.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    #[serde(default)]
    pub uri_san: Option<String>,
    #[serde(default)]
    pub dns_san: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    /// SNI the client sent.
    #[serde(default)]
    pub sni: Option<String>,
    /// Default `TLSv1.3`.
    #[serde(default)]
    pub tls_version: Option<String>,
}
