//! Simulated inference clouds: one HTTP server per named cloud on loopback,
//! each answering with which cloud served the request.
//!
//! `POST /v1/chat/completions` gets an OpenAI-style completion whose text and
//! `x_celroute` field name the cloud; any other request gets a small JSON
//! description. Every response carries `x-served-by: <cloud>`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
#[derive(Clone)]
pub struct Cloud {
    pub name: String,
    pub address: SocketAddr,
    /// Its faults and load, changeable while it serves.
    pub control: Arc<Control>,
}

/// What a simulated cloud does to the requests it gets: added latency, an
/// outage (every request's connection closed before an answer), and the
/// load report (ORCA) it sends.
#[derive(Default)]
pub struct Control {
    pub delay_ms: AtomicU64,
    pub down: AtomicBool,
    /// `endpoint-load-metrics` value sent when the client asks for one.
    pub load_report: Mutex<Option<String>>,
    /// What `GET /metrics` reports, as vLLM names it: requests waiting, and
    /// KV-cache use in thousandths.
    pub queue_depth: AtomicU64,
    pub kv_cache_permille: AtomicU64,
    /// Requests answered.
    pub served: AtomicU64,
    /// Requests refused while down, and when the last one routed by celroute
    /// (with the routing header, unlike its probes) came (ms since the epoch).
    pub refused: AtomicU64,
    pub last_refused_ms: AtomicU64,
}

impl Control {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    pub fn set_delay_ms(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
    pub fn set_load_report(&self, report: Option<&str>) {
        if let Ok(mut r) = self.load_report.lock() {
            *r = report.map(str::to_string);
        }
    }
    fn refuse(&self, routed: bool) {
        self.refused.fetch_add(1, Ordering::SeqCst);
        if routed {
            self.last_refused_ms.store(now_ms(), Ordering::SeqCst);
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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
        let control = Arc::new(Control::default());
        let state = Arc::new(CloudState {
            name: name.clone(),
            control: control.clone(),
        });
        tokio::spawn(accept_loop(listener, state));
        bound.push(Cloud {
            name: name.clone(),
            address,
            control,
        });
    }
    Ok(bound)
}

struct CloudState {
    name: String,
    control: Arc<Control>,
}

/// A request refused by a cloud that is down: the connection is dropped.
#[derive(Debug)]
struct Outage;

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated outage")
    }
}

impl std::error::Error for Outage {}

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
) -> Result<Response<Full<Bytes>>, Outage> {
    let control = &state.control;
    if control.down.load(Ordering::SeqCst) {
        control.refuse(request.headers().contains_key(ROUTING_HEADER));
        return Err(Outage);
    }
    let delay = control.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let n = control.served.fetch_add(1, Ordering::Relaxed) + 1;
    let wants_report = request
        .headers()
        .contains_key("endpoint-load-metrics-format");
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
    if method == "GET" && path == "/metrics" {
        let text = format!(
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"celroute-sim\"}} {}\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"celroute-sim\"}} {}\n",
            control.queue_depth.load(Ordering::SeqCst),
            control.kv_cache_permille.load(Ordering::SeqCst) as f64 / 1000.0
        );
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
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
    let report = control.load_report.lock().ok().and_then(|r| r.clone());
    if let Some(report) = report.filter(|_| wants_report) {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&report) {
            headers.insert("endpoint-load-metrics", value);
        }
    }
    Ok(response)
}

/// A simulated signals feed: serves `GET /v1/signals` with whatever
/// document and status it is given, or drops connections while down.
#[derive(Clone)]
pub struct Feed {
    pub address: SocketAddr,
    pub state: Arc<Mutex<FeedState>>,
}

pub struct FeedState {
    pub status: u16,
    pub body: String,
    pub down: bool,
    /// Requests answered.
    pub polls: u64,
}

impl Feed {
    /// Serves `prices` (cluster -> price per 1k tokens) as a version 1 document.
    pub fn set_prices(&self, prices: &[(&str, f64)]) {
        let clusters: serde_json::Map<String, serde_json::Value> = prices
            .iter()
            .map(|(c, p)| (c.to_string(), serde_json::json!({"price_per_1k_tokens": p})))
            .collect();
        self.set(
            200,
            &serde_json::json!({"version": 1, "clusters": clusters}).to_string(),
        );
    }
    pub fn set(&self, status: u16, body: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.status = status;
            s.body = body.to_string();
            s.down = false;
        }
    }
    pub fn set_down(&self, down: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.down = down;
        }
    }
    pub fn polls(&self) -> u64 {
        self.state.lock().map(|s| s.polls).unwrap_or(0)
    }
}

pub async fn serve_feed(address: SocketAddr) -> Result<Feed> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("signals feed: cannot listen on {address}"))?;
    let feed = Feed {
        address: listener.local_addr()?,
        state: Arc::new(Mutex::new(FeedState {
            status: 200,
            body: r#"{"version": 1, "clusters": {}}"#.into(),
            down: false,
            polls: 0,
        })),
    };
    let state = feed.state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let Ok(mut s) = state.lock() else {
                            return Err(Outage);
                        };
                        if s.down {
                            return Err(Outage);
                        }
                        s.polls += 1;
                        let mut response = Response::new(Full::new(Bytes::from(s.body.clone())));
                        *response.status_mut() =
                            hyper::StatusCode::from_u16(s.status).unwrap_or_default();
                        Ok::<_, Outage>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(feed)
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
