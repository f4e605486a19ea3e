//! Simulated inference clouds: one HTTP server per named cloud on loopback,
//! each answering with which cloud served the request.
//!
//! `POST /v1/chat/completions` gets an OpenAI-style completion whose text and
//! `x_celroute` field name the cloud; any other request gets a small JSON
//! description. Every response carries `x-served-by: <cloud>`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The request header whose value the clouds echo back, so tests can see
/// what routing header reached the upstream.
pub const ROUTING_HEADER: &str = "x-celroute-cluster";

/// One simulated cloud.
#[derive(Debug, Clone)]
pub struct Cloud {
    pub name: String,
    pub address: SocketAddr,
}

/// Binds one listener per cloud (`port` 0 picks a free one) and serves them
/// on the current tokio runtime until the runtime stops.
pub async fn serve(clouds: &[(String, SocketAddr)]) -> Result<Vec<Cloud>> {
    let mut bound = Vec::new();
    for (name, address) in clouds {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cloud '{name}': cannot listen on {address}"))?;
        let address = listener.local_addr()?;
        let state = Arc::new(CloudState {
            name: name.clone(),
            served: AtomicU64::new(0),
        });
        tokio::spawn(accept_loop(listener, state));
        bound.push(Cloud {
            name: name.clone(),
            address,
        });
    }
    Ok(bound)
}

struct CloudState {
    name: String,
    served: AtomicU64,
}

async fn accept_loop(listener: TcpListener, state: Arc<CloudState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(state.clone(), request));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    state: Arc<CloudState>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.served.fetch_add(1, Ordering::Relaxed) + 1;
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let routing_header = request
        .headers()
        .get(ROUTING_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let cloud = &state.name;
    let answer = if method == "POST" && path == "/v1/chat/completions" {
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let model = asked["model"]
            .as_str()
            .unwrap_or("celroute-sim")
            .to_string();
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        serde_json::json!({
            "id": format!("chatcmpl-{cloud}-{n}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": format!("Hello from {cloud}.")},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3},
            "x_celroute": {"cloud": cloud, "routing_header": routing_header},
        })
    } else {
        serde_json::json!({
            "cloud": cloud,
            "method": method,
            "path": path,
            "routing_header": routing_header,
        })
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(cloud) {
        headers.insert("x-served-by", value);
    }
    Ok(response)
}

/// Parses `name=port` arguments into listen addresses on 127.0.0.1.
pub fn parse_specs(specs: &[String]) -> Result<Vec<(String, SocketAddr)>> {
    let mut out: BTreeMap<String, SocketAddr> = BTreeMap::new();
    for spec in specs {
        let (name, port) = spec.split_once('=').with_context(|| {
            format!("'{spec}': expected NAME=PORT, such as aws-us-east-1=18001")
        })?;
        let port: u16 = port
            .parse()
            .with_context(|| format!("'{spec}': '{port}' is not a port number"))?;
        out.insert(name.to_string(), SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Ok(out.into_iter().collect())
}
