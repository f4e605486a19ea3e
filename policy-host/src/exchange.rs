//! The request and response in flight, as the host holds them: the header
//! map Envoy's connection manager hands to filters (pseudo-headers and the
//! headers it adds) and the request's properties, encoded as Envoy encodes them.

use std::collections::HashMap;

use crate::request::{BodySpec, MtlsSpec, RequestSpec};
use crate::wire::{serialize_map, HeaderMap};

/// A local reply the guest sent (`proxy_send_local_response`), as it
/// asked for it (header names lower-cased, as Envoy adds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u32,
    pub details: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The gRPC status asked for (0-16), if any.
    pub grpc_status: Option<u32>,
}

impl LocalResponse {
    /// The response Envoy 1.40 makes of this reply (`Utility::encodeLocalReply`):
    /// to a gRPC request, a trailers-only gRPC response (`:status` 200,
    /// `content-type: application/grpc`, `grpc-status` as asked or mapped
    /// from the HTTP status, the body as a percent-encoded `grpc-message`,
    /// no body); otherwise the status with `content-length` and, unless the
    /// filter named one, `content-type: text/plain` for a body. A HEAD
    /// request gets the headers only.
    pub fn as_sent(&self, request_headers: &HeaderMap) -> (HeaderMap, Vec<u8>) {
        let request = |name: &str| {
            request_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_slice())
        };
        let is_grpc = request("content-type").is_some_and(|v| v.starts_with(b"application/grpc"));
        let is_head = request(":method") == Some(b"HEAD".as_slice());
        let set = |map: &mut HeaderMap, name: &str, value: Vec<u8>| {
            map.retain(|(k, _)| k != name);
            map.push((name.to_string(), value));
        };
        let mut headers: HeaderMap = vec![(":status".into(), self.status.to_string().into_bytes())];
        headers.extend(self.headers.iter().cloned());
        if is_grpc {
            headers[0].1 = b"200".to_vec();
            set(&mut headers, "content-type", b"application/grpc".to_vec());
            if !headers.iter().any(|(k, _)| k == "grpc-status") {
                let status = self
                    .grpc_status
                    .unwrap_or_else(|| http_to_grpc_status(self.status));
                headers.push(("grpc-status".into(), status.to_string().into_bytes()));
            }
            if !self.body.is_empty() && !is_head {
                set(&mut headers, "grpc-message", percent_encode(&self.body));
            }
            headers.retain(|(k, _)| k != "content-length");
            return (headers, Vec::new());
        }
        if self.body.is_empty() {
            headers.retain(|(k, _)| k != "content-length" && k != "content-type");
        } else {
            set(
                &mut headers,
                "content-length",
                self.body.len().to_string().into_bytes(),
            );
            if !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push(("content-type".into(), b"text/plain".to_vec()));
            }
        }
        let body = if is_head {
            Vec::new()
        } else {
            self.body.clone()
        };
        (headers, body)
    }
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus`.
fn http_to_grpc_status(status: u32) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Envoy's `PercentEncoding::encode` for `grpc-message`: bytes outside
/// printable ASCII, and `%`, as `%XX`.
fn percent_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The request and response in flight, as the host holds them.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub request_headers: HeaderMap,
    pub request_trailers: HeaderMap,
    pub request_body: Vec<u8>,
    pub response_headers: HeaderMap,
    pub response_trailers: HeaderMap,
    pub response_body: Vec<u8>,
    pub local_response: Option<LocalResponse>,
    /// The guest asked to continue a paused stream.
    pub resumed: bool,
    /// The request phase is paused (the last request callback answered
    /// Pause and the filter has not continued it since).
    pub request_paused: bool,
    /// Request body the filter let through (the upstream's), and response
    /// body (the client's); `request_body` and `response_body` hold what
    /// it holds back.
    pub request_forwarded: Vec<u8>,
    pub response_forwarded: Vec<u8>,
    /// A response (the upstream's or the local reply) went through the
    /// response phase.
    pub responded: bool,
    /// The guest asked to close the stream.
    pub closed: bool,
    pub time_nanos: u64,
    pub source: String,
    pub destination: String,
    pub mtls: Option<MtlsSpec>,
    pub connection_id: u64,
    /// Context ids that exist now: the root's, and the request's if any.
    pub contexts: Vec<u32>,
    /// Properties the guest set.
    pub set_properties: HashMap<Vec<String>, Vec<u8>>,
    /// Properties answered as given, whatever the request implies.
    pub given_properties: HashMap<Vec<String>, Option<Vec<u8>>>,
    /// The status of the response, once there is one.
    pub response_code: Option<u16>,
    /// The cluster that answered, once one did.
    pub upstream_cluster: Option<String>,
}

impl Exchange {
    /// The request as Envoy's HTTP connection manager hands it to filters.
    pub fn from_spec(spec: &RequestSpec, request_number: u64, time_nanos: u64) -> Exchange {
        let method = spec.method.clone().unwrap_or_else(|| "GET".into());
        let path = spec.path.clone().unwrap_or_else(|| "/".into());
        let host = spec.host.clone().unwrap_or_else(|| "celroute.test".into());
        let scheme = spec.scheme.clone().unwrap_or_else(|| "http".into());
        let mut headers: HeaderMap = vec![
            (":authority".into(), host.into_bytes()),
            (":path".into(), path.into_bytes()),
            (":method".into(), method.into_bytes()),
            (":scheme".into(), scheme.clone().into_bytes()),
        ];
        for (name, value) in spec.header_pairs() {
            let name = name.to_ascii_lowercase();
            if name == "host" {
                // HTTP/1.1's Host becomes :authority.
                headers[0].1 = value.into_bytes();
                continue;
            }
            headers.push((name, value.into_bytes()));
        }
        let body = spec.body.as_ref().map(BodySpec::text).unwrap_or_default();
        if !body.is_empty() && !headers.iter().any(|(k, _)| k == "content-length") {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        if !headers.iter().any(|(k, _)| k == "x-forwarded-proto") {
            headers.push(("x-forwarded-proto".into(), scheme.into_bytes()));
        }
        if !headers.iter().any(|(k, _)| k == "x-request-id") {
            headers.push((
                "x-request-id".into(),
                format!("00000000-0000-4000-8000-{request_number:012x}").into_bytes(),
            ));
        }
        Exchange {
            request_headers: headers,
            request_body: body.into_bytes(),
            time_nanos,
            source: spec
                .source
                .clone()
                .unwrap_or_else(|| "127.0.0.1:50000".into()),
            destination: spec
                .destination
                .clone()
                .unwrap_or_else(|| "127.0.0.1:10000".into()),
            mtls: spec.mtls.clone(),
            connection_id: request_number,
            given_properties: spec.properties.iter().cloned().collect(),
            ..Exchange::default()
        }
    }

    /// The filter let the request go on: what it held back of the body
    /// goes to the upstream.
    pub fn continue_request(&mut self) {
        self.request_paused = false;
        let passed = std::mem::take(&mut self.request_body);
        self.request_forwarded.extend_from_slice(&passed);
    }

    /// A HEAD request: its response has no body.
    pub fn is_head(&self) -> bool {
        self.header(":method").as_deref() == Some(b"HEAD".as_slice())
    }

    pub fn known_context(&self, id: u32) -> bool {
        self.contexts.contains(&id)
    }

    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.request_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn set_property(&mut self, path: Vec<String>, value: Vec<u8>) {
        self.set_properties.insert(path, value);
    }

    /// A property by path, as Envoy encodes it; `None` where Envoy answers NotFound.
    pub fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        if let Some(value) = self.set_properties.get(path) {
            return Some(value.clone());
        }
        if let Some(value) = self.given_properties.get(path) {
            return value.clone();
        }
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let int = |v: i64| Some(v.to_le_bytes().to_vec());
        let tls = |f: fn(&MtlsSpec) -> Option<String>| {
            self.mtls.as_ref().and_then(f).map(String::into_bytes)
        };
        match path.as_slice() {
            ["request", "path"] => self.header(":path"),
            ["request", "url_path"] => self.header(":path").map(|p| {
                let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
                p[..end].to_vec()
            }),
            ["request", "query"] => {
                self.header(":path")
                    .map(|p| match p.iter().position(|b| *b == b'?') {
                        // As Envoy's CEL context: up to a fragment, empty without `?`.
                        Some(q) => {
                            let query = &p[q + 1..];
                            let end = query.iter().position(|b| *b == b'#');
                            query[..end.unwrap_or(query.len())].to_vec()
                        }
                        None => Vec::new(),
                    })
            }
            ["request", "host"] => self.header(":authority"),
            ["request", "scheme"] => self.header(":scheme"),
            ["request", "method"] => self.header(":method"),
            ["request", "referer"] => self.header("referer"),
            ["request", "useragent"] => self.header("user-agent"),
            ["request", "id"] => self.header("x-request-id"),
            ["request", "protocol"] => Some(b"HTTP/1.1".to_vec()),
            ["request", "time"] => int(self.time_nanos as i64),
            ["request", "headers"] => Some(serialize_map(&self.request_headers)),
            ["source", "address"] => Some(self.source.clone().into_bytes()),
            ["source", "port"] => int(port_of(&self.source)?),
            ["destination", "address"] => Some(self.destination.clone().into_bytes()),
            ["destination", "port"] => int(port_of(&self.destination)?),
            ["connection", "id"] => Some(self.connection_id.to_le_bytes().to_vec()),
            ["connection", "mtls"] => Some(vec![u8::from(self.mtls.is_some())]),
            ["connection", "requested_server_name"] => tls(|m| m.sni.clone()),
            ["connection", "tls_version"] => {
                tls(|m| Some(m.tls_version.clone().unwrap_or_else(|| "TLSv1.3".into())))
            }
            ["connection", "subject_peer_certificate"] => tls(|m| m.subject.clone()),
            ["connection", "uri_san_peer_certificate"] => tls(|m| m.uri_san.clone()),
            ["connection", "dns_san_peer_certificate"] => tls(|m| m.dns_san.clone()),
            ["response", "code"] => int(i64::from(self.response_code?)),
            // The simulated network has no connection failures to flag.
            ["response", "flags"] => self.response_code.and_then(|_| int(0)),
            ["xds", "cluster_name"] => Some(self.upstream_cluster.clone()?.into_bytes()),
            ["plugin_name"] | ["plugin_root_id"] | ["plugin_vm_id"] => Some(b"celroute".to_vec()),
            _ => None,
        }
    }
}

/// The port of `ip:port` or `[ipv6]:port`.
fn port_of(address: &str) -> Option<i64> {
    address.rsplit_once(':')?.1.parse().ok()
}
