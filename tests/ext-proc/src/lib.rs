//! celroute's decision made outside the proxy: an Envoy external processor
//! (`envoy.filters.http.ext_proc`, gRPC) that runs celroute's engine natively
//! on the request headers Envoy sends it, and answers with the routing header
//! to set (and a route-cache clear) or a local reply for a denial, in the same
//! shape as the filter's.
//!
//! This is the design Envoy AI Gateway and the Gateway API inference extension
//! use; `make bench-envoy` runs it side by side with the in-proxy filter to
//! show what deciding inside Envoy saves. It reads what Envoy sends with the
//! request headers: the headers, and `request.path`, `request.url_path`,
//! `request.host`, `request.method`, `request.scheme`, `request.query`,
//! `request.id` and `request.time` derived from them. Policies that read
//! other attributes, the body or live state are outside its scope.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use celroute::engine::{AttributeHost, Outcome, Policy, Router};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, CommonResponse, HeaderMutation, HeadersResponse,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The processor: one policy, shared by every stream (clones share it).
#[derive(Clone)]
pub struct Processor {
    router: Arc<Router>,
    decisions: Arc<AtomicU64>,
}

impl Processor {
    /// A processor deciding with the policy in `text` (YAML or JSON, as the
    /// filter reads it).
    pub fn new(text: &str) -> Result<Processor> {
        let policy = Policy::load(text).map_err(|e| anyhow::anyhow!("the policy: {e}"))?;
        Ok(Processor {
            router: Arc::new(Router::new(policy)),
            decisions: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A counter of the decisions made, shared with the running service.
    pub fn decisions(&self) -> Arc<AtomicU64> {
        self.decisions.clone()
    }

    /// Serves on `listener` until the task is dropped. Accepted connections
    /// get `TCP_NODELAY`, as Envoy's own do: without it each small answer
    /// waits for the peer's delayed acknowledgement (about 40 ms).
    pub async fn serve(self, listener: TcpListener) -> Result<()> {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(self))
            .serve_with_incoming(incoming)
            .await
            .context("the ext_proc gRPC server")
    }

    /// The answer to one message of a stream.
    fn answer(&self, message: ProcessingRequest) -> ProcessingResponse {
        let headers = match message.request {
            Some(processing_request::Request::RequestHeaders(headers)) => headers,
            // Only request headers are asked for (processing_mode); anything
            // else passes unchanged.
            Some(processing_request::Request::ResponseHeaders(_)) => {
                return respond(processing_response::Response::ResponseHeaders(
                    HeadersResponse::default(),
                ))
            }
            _ => return ProcessingResponse::default(),
        };
        let mut host = HeaderHost::new(headers);
        let (decision, _) = self.router.decide(&mut host, false);
        self.decisions.fetch_add(1, Ordering::Relaxed);
        match &decision.outcome {
            Outcome::Route { cluster } => {
                let cluster = cluster.as_str();
                let mut set_headers = vec![set(self.router.policy().routing_header(), cluster)];
                if let Some(name) = self.router.policy().fallback_header() {
                    set_headers.push(set(name, decision.fallback.as_deref().unwrap_or(cluster)));
                }
                respond(processing_response::Response::RequestHeaders(
                    HeadersResponse {
                        response: Some(CommonResponse {
                            header_mutation: Some(HeaderMutation {
                                set_headers,
                                ..HeaderMutation::default()
                            }),
                            clear_route_cache: true,
                            ..CommonResponse::default()
                        }),
                    },
                ))
            }
            Outcome::Deny { status, .. } => respond(
                processing_response::Response::ImmediateResponse(ImmediateResponse {
                    status: Some(HttpStatus {
                        code: i32::from(*status),
                    }),
                    headers: Some(HeaderMutation {
                        set_headers: vec![set("content-type", "application/json")],
                        ..HeaderMutation::default()
                    }),
                    body: decision.deny_body().into_bytes(),
                    details: "celroute_policy_denied".into(),
                    ..ImmediateResponse::default()
                }),
            ),
        }
    }
}

fn respond(response: processing_response::Response) -> ProcessingResponse {
    ProcessingResponse {
        response: Some(response),
        ..ProcessingResponse::default()
    }
}

/// A header to set, replacing every value the client sent.
fn set(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            raw_value: value.as_bytes().to_vec(),
            ..HeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Processor {
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(message) = incoming.next().await {
                let answer = message.map(|m| me.answer(m));
                if tx.send(answer).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The request as Envoy sends it to a processor: header names lower-case,
/// pseudo-headers (`:path`, `:method`, `:authority`, `:scheme`) included.
pub struct HeaderHost {
    headers: Vec<(String, Vec<u8>)>,
}

impl HeaderHost {
    pub fn new(message: HttpHeaders) -> HeaderHost {
        let headers = message
            .headers
            .map(|map| map.headers)
            .unwrap_or_default()
            .into_iter()
            .map(|h| {
                // Envoy fills raw_value; value is the older field.
                let value = if h.raw_value.is_empty() {
                    h.value.into_bytes()
                } else {
                    h.raw_value
                };
                (h.key.to_ascii_lowercase(), value)
            })
            .collect();
        HeaderHost { headers }
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

impl AttributeHost for HeaderHost {
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.get(name).map(<[u8]>::to_vec)
    }

    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)> {
        self.headers.clone()
    }

    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        let [root, field] = path else {
            return None;
        };
        if *root != "request" {
            return None;
        }
        let full = self.get(":path");
        let split = |full: &[u8]| {
            let at = full.iter().position(|&b| b == b'?').unwrap_or(full.len());
            (
                full[..at].to_vec(),
                full.get(at + 1..).unwrap_or_default().to_vec(),
            )
        };
        match *field {
            "path" => full.map(<[u8]>::to_vec),
            "url_path" => full.map(|p| split(p).0),
            "query" => full.map(|p| split(p).1),
            "host" => self.get(":authority").map(<[u8]>::to_vec),
            "method" => self.get(":method").map(<[u8]>::to_vec),
            "scheme" => self.get(":scheme").map(<[u8]>::to_vec),
            "id" => self.get("x-request-id").map(<[u8]>::to_vec),
            "referer" => self.get("referer").map(<[u8]>::to_vec),
            "useragent" => self.get("user-agent").map(<[u8]>::to_vec),
            "time" => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                Some(nanos.to_le_bytes().to_vec())
            }
            _ => None,
        }
    }
}
