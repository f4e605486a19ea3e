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
    #[serde(default)]
    pub body: Option<String>,
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
