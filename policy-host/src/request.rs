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
    /// request implies: what a request cannot carry, such as
    /// `request.time` or `connection.id`, when a replay restores them.
    #[serde(skip)]
    pub properties: Vec<(Vec<String>, Option<Vec<u8>>)>,
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
