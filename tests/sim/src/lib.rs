//! Simulated inference clouds: one HTTP server per named cloud on loopback,
//! each answering with which cloud served the request.
//!
//! They speak the OpenAI API: `POST /v1/chat/completions` (a completion whose
//! text and `x_celroute` field name the cloud; with `"stream": true` as
//! server-sent events, each event split over two writes, `usage` in a last
//! event when `stream_options.include_usage` is set), `POST /v1/embeddings`
//! (floats, or base64 as the OpenAI SDKs ask by default) and `GET /v1/models`.
//! Token counts are deterministic: a prompt token per word of the messages
//! (or inputs), and `max_tokens` completion tokens (3 by default). Any other
//! request gets a small JSON description. Every response carries
//! `x-served-by: <cloud>`.
//!
//! `/sim/control` is the simulator's own switchboard, answered even while the
//! cloud is down: `GET` returns its counters, `POST` with a JSON object
//! changes any of `down`, `delay_ms`, `queue_depth`, `kv_cache_permille` and
//! `load_report` (a string, or null for none). The demos use it from outside
//! a container; a real inference server has no such path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
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
    /// Tokens reported in `usage` (responses and stream events that carry it).
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
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
    fn count_usage(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::SeqCst);
        self.completion_tokens
            .fetch_add(completion, Ordering::SeqCst);
    }
    fn refuse(&self, routed: bool) {
        self.refused.fetch_add(1, Ordering::SeqCst);
        if routed {
            self.last_refused_ms.store(now_ms(), Ordering::SeqCst);
        }
    }
}

/// A request's whole body (empty if it could not be read).
async fn body_bytes(request: Request<Incoming>) -> Bytes {
    request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// One validated change to a cloud's settings.
type Step = Box<dyn Fn(&Control)>;

/// The path of a simulated cloud's switchboard.
pub const CONTROL_PATH: &str = "/sim/control";

impl Control {
    /// The counters and settings, as `GET /sim/control` reports them.
    pub fn report(&self) -> serde_json::Value {
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        serde_json::json!({
            "down": self.down.load(Ordering::SeqCst),
            "delay_ms": load(&self.delay_ms),
            "queue_depth": load(&self.queue_depth),
            "kv_cache_permille": load(&self.kv_cache_permille),
            "load_report": self.load_report.lock().ok().and_then(|r| r.clone()),
            "served": load(&self.served),
            "refused": load(&self.refused),
            "prompt_tokens": load(&self.prompt_tokens),
            "completion_tokens": load(&self.completion_tokens),
        })
    }

    /// Applies the settings `change` names; an unknown name or a value of
    /// the wrong type is refused, and then nothing changes.
    pub fn apply(&self, change: &serde_json::Value) -> Result<(), String> {
        let serde_json::Value::Object(fields) = change else {
            return Err("expected a JSON object".into());
        };
        let number = |name: &str, v: &serde_json::Value| {
            v.as_u64()
                .ok_or_else(|| format!("'{name}' must be a whole number, not {v}"))
        };
        let mut steps: Vec<Step> = Vec::new();
        for (name, value) in fields {
            match name.as_str() {
                "down" => {
                    let down = value
                        .as_bool()
                        .ok_or_else(|| format!("'down' must be true or false, not {value}"))?;
                    steps.push(Box::new(move |c| c.set_down(down)));
                }
                "delay_ms" => {
                    let n = number(name, value)?;
                    steps.push(Box::new(move |c| c.set_delay_ms(n)));
                }
                "queue_depth" => {
                    let n = number(name, value)?;
                    steps.push(Box::new(move |c| c.queue_depth.store(n, Ordering::SeqCst)));
                }
                "kv_cache_permille" => {
                    let n = number(name, value)?;
                    steps.push(Box::new(move |c| {
                        c.kv_cache_permille.store(n, Ordering::SeqCst)
                    }));
                }
                "load_report" => {
                    let report = match value {
                        serde_json::Value::Null => None,
                        serde_json::Value::String(s) => Some(s.clone()),
                        other => {
                            return Err(format!(
                                "'load_report' must be a string or null, not {other}"
                            ))
                        }
                    };
                    steps.push(Box::new(move |c| c.set_load_report(report.as_deref())));
                }
                other => {
                    return Err(format!(
                        "unknown setting '{other}'; known: down, delay_ms, queue_depth, kv_cache_permille, load_report"
                    ))
                }
            }
        }
        for step in steps {
            step(self);
        }
        Ok(())
    }
}

async fn answer_control(control: &Control, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let reply = |status: u16, body: serde_json::Value| {
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
        response.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    };
    if method == hyper::Method::GET {
        return reply(200, control.report());
    }
    if method != hyper::Method::POST {
        return reply(405, serde_json::json!({"error": "use GET or POST"}));
    }
    let body = body_bytes(request).await;
    let change = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(change) => change,
        Err(e) => {
            return reply(
                400,
                serde_json::json!({"error": format!("invalid JSON: {e}")}),
            )
        }
    };
    match control.apply(&change) {
        Ok(()) => reply(200, control.report()),
        Err(e) => reply(400, serde_json::json!({"error": e})),
    }
}

/// Waits for Ctrl-C or SIGTERM (what `docker stop` sends to a container's
/// first process).
pub async fn until_stopped() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
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

type Body = BoxBody<Bytes, std::convert::Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

async fn answer(
    state: Arc<CloudState>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Outage> {
    let control = &state.control;
    if request.uri().path() == CONTROL_PATH {
        return Ok(answer_control(control, request).await);
    }
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
    let body = body_bytes(request).await;
    let cloud = &state.name;
    if method == "GET" && path == "/metrics" {
        let text = format!(
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"celroute-sim\"}} {}\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"celroute-sim\"}} {}\n",
            control.queue_depth.load(Ordering::SeqCst),
            control.kv_cache_permille.load(Ordering::SeqCst) as f64 / 1000.0
        );
        return Ok(Response::new(full(text)));
    }
    let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = asked["model"]
        .as_str()
        .unwrap_or("celroute-sim")
        .to_string();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let id = format!("chatcmpl-{cloud}-{n}");
    let is_chat = method == "POST" && path == "/v1/chat/completions";
    if is_chat && asked["stream"] == true {
        return Ok(stream_completion(&state, &asked, id, model, created));
    }
    let answer = if is_chat {
        let prompt = prompt_tokens(&asked);
        let words = reply_words(cloud, completion_tokens(&asked));
        control.count_usage(prompt, words.len() as u64);
        serde_json::json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": words.join(" ")},
                "finish_reason": "stop"
            }],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": words.len(),
                "total_tokens": prompt + words.len() as u64,
            },
            "x_celroute": {"cloud": cloud, "routing_header": routing_header},
        })
    } else if method == "POST" && path == "/v1/embeddings" {
        let inputs = match &asked["input"] {
            serde_json::Value::Array(items) => items.len(),
            _ => 1,
        };
        let prompt = prompt_tokens(&asked);
        control.count_usage(prompt, 0);
        let base64 = asked["encoding_format"] == "base64";
        let data: Vec<serde_json::Value> = (0..inputs)
            .map(|i| {
                let vector: Vec<f32> = (0..8).map(|d| (i * 8 + d) as f32 / 64.0).collect();
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                    serde_json::json!(base64_encode(&bytes))
                } else {
                    serde_json::json!(vector)
                };
                serde_json::json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        serde_json::json!({
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        })
    } else if method == "GET" && path == "/v1/models" {
        serde_json::json!({
            "object": "list",
            "data": [
                {"id": "celroute-sim", "object": "model", "created": 0, "owned_by": cloud},
                {"id": format!("{cloud}-embed"), "object": "model", "created": 0, "owned_by": cloud},
            ],
        })
    } else {
        serde_json::json!({
            "cloud": cloud,
            "method": method,
            "path": path,
            "routing_header": routing_header,
        })
    };
    let mut response = Response::new(full(answer.to_string()));
    decorate(&mut response, &state, "application/json", wants_report);
    Ok(response)
}

/// The headers every answer carries: its type, the cloud, and the load
/// report when the client asked for one.
fn decorate(
    response: &mut Response<Body>,
    state: &CloudState,
    content_type: &'static str,
    wants_report: bool,
) {
    let headers = response.headers_mut();
    headers.insert(
        "content-type",
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(&state.name) {
        headers.insert("x-served-by", value);
    }
    let report = state
        .control
        .load_report
        .lock()
        .ok()
        .and_then(|r| r.clone());
    if let Some(report) = report.filter(|_| wants_report) {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&report) {
            headers.insert("endpoint-load-metrics", value);
        }
    }
}

/// A streamed chat completion: a first event with the role, one per word,
/// one with the finish reason, the usage when asked for, then `[DONE]`.
/// Each event goes out in two writes split inside its JSON, so that a
/// reader sees events cut at arbitrary places.
fn stream_completion(
    state: &CloudState,
    asked: &serde_json::Value,
    id: String,
    model: String,
    created: u64,
) -> Response<Body> {
    let cloud = state.name.clone();
    let prompt = prompt_tokens(asked);
    let words = reply_words(&cloud, completion_tokens(asked));
    let include_usage = asked["stream_options"]["include_usage"] == true;
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut events = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        None,
    )];
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        events.push(chunk(serde_json::json!({"content": text}), None));
    }
    events.push(chunk(serde_json::json!({}), Some("stop")));
    if include_usage {
        state.control.count_usage(prompt, words.len() as u64);
        events.push(serde_json::json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": words.len(),
                "total_tokens": prompt + words.len() as u64,
            },
        }));
    }
    let mut frames: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    frames.push("data: [DONE]\n\n".into());
    let (mut sender, body) = http_body_util::channel::Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        for frame in frames {
            let half = frame.len() / 2;
            for part in [&frame[..half], &frame[half..]] {
                if sender
                    .send_data(Bytes::from(part.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    });
    let mut response = Response::new(body.boxed());
    decorate(&mut response, state, "text/event-stream", false);
    response
}

/// A prompt token per whitespace-separated word of the messages' text (or
/// of the embedding inputs).
fn prompt_tokens(asked: &serde_json::Value) -> u64 {
    let words = |v: &serde_json::Value| v.as_str().map_or(0, |s| s.split_whitespace().count());
    let messages = asked["messages"].as_array().map_or(0, |m| {
        m.iter().map(|message| words(&message["content"])).sum()
    });
    let inputs = match &asked["input"] {
        serde_json::Value::Array(items) => items.iter().map(words).sum(),
        other => words(other),
    };
    (messages + inputs) as u64
}

/// `max_tokens` (or `max_completion_tokens`), 3 by default, at most 4,096.
fn completion_tokens(asked: &serde_json::Value) -> usize {
    let n = asked["max_tokens"]
        .as_u64()
        .or_else(|| asked["max_completion_tokens"].as_u64())
        .unwrap_or(3);
    n.clamp(1, 4096) as usize
}

/// "Hello from <cloud>." and then as many more words as asked for.
fn reply_words(cloud: &str, n: usize) -> Vec<String> {
    let first = ["Hello".to_string(), "from".to_string(), format!("{cloud}.")];
    (0..n)
        .map(|i| first.get(i).cloned().unwrap_or_else(|| format!("word{i}")))
        .collect()
}

/// Standard base64 with padding (how the OpenAI API sends embeddings).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
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

/// `PUT` on the feed replaces its document (served with status 200) with
/// the body, which must be JSON; the filter decides whether it is a good
/// feed document.
async fn replace_feed_document(
    state: &Mutex<FeedState>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let body = body_bytes(request).await;
    let (status, text) = match serde_json::from_slice::<serde_json::Value>(&body) {
        Err(e) => (400, format!("{{\"error\": \"invalid JSON: {e}\"}}")),
        Ok(_) => match state.lock() {
            Ok(mut s) => {
                s.status = 200;
                s.body = String::from_utf8_lossy(&body).into_owned();
                s.down = false;
                (200, s.body.clone())
            }
            Err(_) => (500, "{}".to_string()),
        },
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response
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
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        if request.method() == hyper::Method::PUT {
                            return Ok(replace_feed_document(&state, request).await);
                        }
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

/// Parses `NAME=PORT` (on 127.0.0.1) or `NAME=ADDRESS:PORT` arguments into
/// listen addresses.
pub fn parse_specs(specs: &[String]) -> Result<Vec<(String, SocketAddr)>> {
    let mut out: BTreeMap<String, SocketAddr> = BTreeMap::new();
    for spec in specs {
        let (name, at) = spec.split_once('=').with_context(|| {
            format!(
                "'{spec}': expected NAME=PORT or NAME=ADDRESS:PORT, such as aws-us-east-1=18001"
            )
        })?;
        out.insert(
            name.to_string(),
            parse_address(at).with_context(|| format!("'{spec}'"))?,
        );
    }
    Ok(out.into_iter().collect())
}

/// `PORT` (on 127.0.0.1) or `ADDRESS:PORT`.
pub fn parse_address(at: &str) -> Result<SocketAddr> {
    if let Ok(port) = at.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    at.parse().with_context(|| {
        format!("'{at}' is neither a port number nor an address such as 0.0.0.0:8000")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_take_ports_or_addresses() {
        let specs = ["aws=18001".to_string(), "gcp=0.0.0.0:8000".to_string()];
        let parsed = parse_specs(&specs).expect("valid");
        assert_eq!(parsed[0].1, SocketAddr::from(([127, 0, 0, 1], 18001)));
        assert_eq!(parsed[1].1, SocketAddr::from(([0, 0, 0, 0], 8000)));
        let error = parse_specs(&["aws=cloud".to_string()]).expect_err("invalid");
        assert!(
            format!("{error:#}").contains("'cloud' is neither a port number"),
            "{error:#}"
        );
    }

    #[test]
    fn control_changes_all_or_nothing() {
        let control = Control::default();
        control
            .apply(&serde_json::json!({"queue_depth": 40, "down": true}))
            .expect("valid");
        assert_eq!(control.report()["queue_depth"], 40);
        assert_eq!(control.report()["down"], true);
        let error = control
            .apply(&serde_json::json!({"queue_depth": 5, "delay": 3}))
            .expect_err("unknown setting");
        assert!(error.contains("unknown setting 'delay'"), "{error}");
        assert_eq!(control.report()["queue_depth"], 40, "nothing changed");
        assert!(control.apply(&serde_json::json!({"down": "yes"})).is_err());
    }

    #[test]
    fn base64_as_rfc_4648() {
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_encode(b"M"), "TQ==");
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    #[test]
    fn tokens_are_counted_by_words() {
        let asked = serde_json::json!({"messages": [{"content": "a b c"}, {"content": "d"}], "max_tokens": 5});
        assert_eq!(prompt_tokens(&asked), 4);
        assert_eq!(
            reply_words("aws", completion_tokens(&asked)).join(" "),
            "Hello from aws. word3 word4"
        );
        assert_eq!(
            prompt_tokens(&serde_json::json!({"input": ["a b", "c"]})),
            3
        );
    }
}
