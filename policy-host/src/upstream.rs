//! What the simulated network answers: the response of each upstream
//! cluster a request is routed to, and the replies to the guest's HTTP
//! callouts, scripted by tests. Unscripted, an upstream answers `200 {}`
//! and a callout is never answered (as a cluster that does not reply).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::wire::HeaderMap;

/// The header whose value names the cluster a request is routed to, as
/// Envoy's `cluster_header` route reads it.
pub const DEFAULT_ROUTE_HEADER: &str = "x-celroute-cluster";

/// An HTTP response: status, headers (without `:status`), body and trailers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The sizes of the chunks the body arrives in (empty: one chunk).
    pub chunk_sizes: Vec<usize>,
    pub trailers: HeaderMap,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: body.as_bytes().to_vec(),
            ..Response::default()
        }
    }

    /// The body in the chunks it arrives in: none for an empty body; the
    /// sizes given, the last chunk taking what they leave.
    pub fn chunks(&self) -> Vec<&[u8]> {
        let mut chunks = Vec::new();
        let mut rest = self.body.as_slice();
        for size in &self.chunk_sizes {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).clamp(1, rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        if !rest.is_empty() {
            chunks.push(rest);
        }
        chunks
    }

    /// The headers as a proxy-wasm header map, `:status` first.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = vec![(":status".to_string(), self.status.to_string().into_bytes())];
        map.extend(self.headers.iter().cloned());
        map
    }
}

/// The upstream's answer to a unary gRPC call: status 0 with a message,
/// or another status with an error message (its `grpc-message`, which the
/// filter reads as Envoy 1.40 presents it: see [`envoy_grpc_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcReply {
    pub status: u32,
    pub message: Vec<u8>,
    pub error_message: String,
}

/// The upstream's answer on a gRPC stream: initial metadata, messages,
/// trailing metadata, then the status it closes with (0, or another with
/// an error message).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrpcStreamReply {
    pub initial_metadata: HeaderMap,
    pub messages: Vec<Vec<u8>>,
    pub trailing_metadata: HeaderMap,
    pub status: u32,
    pub error_message: String,
}

/// The status message a filter reads (`proxy_get_status`) when an upstream
/// closes a gRPC call or stream, as Envoy 1.40 gives it: the upstream's
/// `grpc-message` followed by where the status came from in braces, or
/// that alone when there is no message (`via_upstream`).
pub fn envoy_grpc_message(upstream_message: &str) -> String {
    if upstream_message.is_empty() {
        "via_upstream".to_string()
    } else {
        format!("{upstream_message}{{via_upstream}}")
    }
}

#[derive(Debug, Default)]
struct Script {
    grpc_streams: HashMap<String, GrpcStreamReply>,
    /// The clusters Envoy has, when defined; else every cluster exists.
    defined: Option<std::collections::HashSet<String>>,
    grpc: HashMap<String, GrpcReply>,
    /// Every request goes to this cluster (a route's `cluster`), when set.
    fixed_route: Option<String>,
    route_header: Option<String>,
    clusters: HashMap<String, Response>,
    latencies: HashMap<String, std::time::Duration>,
    callouts: HashMap<String, VecDeque<Response>>,
}

/// The scripted network, shared by every VM of one simulated proxy.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    script: Arc<Mutex<Script>>,
}

impl Upstreams {
    fn with<T>(&self, f: impl FnOnce(&mut Script) -> T) -> T {
        // A panic elsewhere while the lock was held leaves the script as it was.
        let mut script = match self.script.lock() {
            Ok(script) => script,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut script)
    }

    /// Declares the clusters the simulated Envoy has: from then on, a
    /// callout to any other (and not scripted) cluster is refused, as Envoy
    /// refuses it. Until then every cluster exists.
    pub fn define_clusters<'a>(&self, clusters: impl IntoIterator<Item = &'a str>) {
        self.with(|s| {
            s.defined
                .get_or_insert_with(Default::default)
                .extend(clusters.into_iter().map(str::to_string))
        });
    }

    /// The cluster exists: defined, scripted, or no clusters were defined.
    pub fn knows(&self, cluster: &str) -> bool {
        self.with(|s| match &s.defined {
            None => true,
            Some(defined) => {
                defined.contains(cluster)
                    || s.clusters.contains_key(cluster)
                    || s.callouts.contains_key(cluster)
                    || s.grpc.contains_key(cluster)
                    || s.grpc_streams.contains_key(cluster)
            }
        })
    }

    /// Every unary gRPC call to `cluster` gets `reply`.
    pub fn answer_grpc(&self, cluster: &str, reply: GrpcReply) {
        self.with(|s| s.grpc.insert(cluster.to_string(), reply));
    }

    /// Every gRPC stream opened to `cluster` gets `reply` (once the filter
    /// has opened it, after the callback that opened it).
    pub fn answer_grpc_stream(&self, cluster: &str, reply: GrpcStreamReply) {
        self.with(|s| s.grpc_streams.insert(cluster.to_string(), reply));
    }

    pub(crate) fn grpc_stream_reply(&self, cluster: &str) -> Option<GrpcStreamReply> {
        self.with(|s| s.grpc_streams.get(cluster).cloned())
    }

    /// The scripted reply to a gRPC call to `cluster`, if any.
    pub(crate) fn grpc_reply(&self, cluster: &str) -> Option<GrpcReply> {
        self.with(|s| s.grpc.get(cluster).cloned())
    }

    /// Routes by this request header instead of [`DEFAULT_ROUTE_HEADER`].
    pub fn route_by(&self, header: &str) {
        self.with(|s| s.route_header = Some(header.to_ascii_lowercase()));
    }

    /// Every request routed to `cluster`, and every callout to it without
    /// a queued reply, gets `response`.
    pub fn answer(&self, cluster: &str, response: Response) {
        self.with(|s| s.clusters.insert(cluster.to_string(), response));
    }

    /// `cluster` takes `latency` to answer (on a virtual clock).
    pub fn delay(&self, cluster: &str, latency: std::time::Duration) {
        self.with(|s| s.latencies.insert(cluster.to_string(), latency));
    }

    /// How long `cluster` takes to answer.
    pub fn latency(&self, cluster: Option<&str>) -> std::time::Duration {
        cluster
            .and_then(|c| self.with(|s| s.latencies.get(c).copied()))
            .unwrap_or_default()
    }

    /// The next callout to `upstream` gets `reply` (replies queue up, one per call).
    pub fn reply_to_callout(&self, upstream: &str, reply: Response) {
        self.with(|s| {
            s.callouts
                .entry(upstream.to_string())
                .or_default()
                .push_back(reply)
        });
    }

    /// Routes every request to `cluster`, as a route with a fixed `cluster`.
    pub fn route_to(&self, cluster: &str) {
        self.with(|s| s.fixed_route = Some(cluster.to_string()));
    }

    /// The cluster a request with these headers is routed to.
    pub fn cluster_of(&self, request_headers: &HeaderMap) -> Option<String> {
        if let Some(cluster) = self.with(|s| s.fixed_route.clone()) {
            return Some(cluster);
        }
        let header = self.with(|s| s.route_header.clone());
        let header = header.as_deref().unwrap_or(DEFAULT_ROUTE_HEADER);
        request_headers
            .iter()
            .find(|(k, _)| k == header)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// What the upstream `cluster` answers (`200 {}` unless scripted).
    pub fn response(&self, cluster: Option<&str>) -> Response {
        let scripted = cluster.and_then(|c| self.with(|s| s.clusters.get(c).cloned()));
        scripted.unwrap_or_else(|| Response::json(200, "{}"))
    }

    /// The scripted reply to the next callout to `upstream`, if any: the
    /// next queued one, else what the cluster answers every request.
    pub(crate) fn next_callout_reply(&self, upstream: &str) -> Option<Response> {
        self.with(|s| {
            let queued = s.callouts.get_mut(upstream).and_then(VecDeque::pop_front);
            queued.or_else(|| s.clusters.get(upstream).cloned())
        })
    }
}
