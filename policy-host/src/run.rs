//! Scripted exchanges through any proxy-wasm filter (`policy-host run`):
//! the clusters Envoy would have and what they answer, then steps
//! (requests, time passing, shutdown), each reported as Envoy would show
//! it, and optionally checked against what the script expects.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::clock::Clock;
use crate::environment::Environment;
use crate::request::{BodySpec, Headers, RequestSpec};
use crate::upstream::{GrpcReply, GrpcStreamReply, Response};
use crate::vm::{FilterModule, Flow, RequestRecord, Vm};
use crate::wire::HeaderMap;

/// The clock a script starts at unless it names one: fixed, so that runs
/// repeat exactly.
pub const DEFAULT_START: &str = "2026-01-01T00:00:00Z";

/// What Envoy 1.40's router answers a request whose `cluster_header` names
/// no cluster, or one it does not have (`cluster_not_found_response_code`'s
/// default).
pub const NO_CLUSTER_STATUS: u16 = 503;

/// A script: the filter's configuration, the simulated Envoy's clusters and
/// route, and the steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// The plugin configuration (`configuration` in Envoy's filter config).
    #[serde(default)]
    pub configuration: Option<String>,
    /// The VM configuration (`vm_config.configuration`).
    #[serde(default)]
    pub vm_configuration: Option<String>,
    /// A virtual clock's start (RFC 3339), or `system` for the real clock.
    #[serde(default)]
    pub clock: Option<String>,
    /// How requests that pass the filter find their cluster.
    #[serde(default)]
    pub route: Option<RouteSpec>,
    /// The clusters the simulated Envoy has, with what each answers; a
    /// callout to any other cluster is refused as Envoy refuses it.
    #[serde(default)]
    pub clusters: IndexMap<String, ClusterSpec>,
    pub steps: Vec<Step>,
}

/// A route: a fixed `cluster`, or the cluster a request header names
/// (`cluster_header`, Envoy's way for routing filters).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub cluster_header: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// What it answers requests routed to it and HTTP callouts (default `200`, no body).
    #[serde(default)]
    pub response: Option<ResponseSpec>,
    /// What it answers unary gRPC calls; unset, they wait.
    #[serde(default)]
    pub grpc: Option<GrpcSpec>,
    /// What it answers on gRPC streams; unset, they wait.
    #[serde(default)]
    pub grpc_stream: Option<GrpcStreamSpec>,
    /// How long it takes to answer (`250ms`, `2s`), on the virtual clock.
    #[serde(default)]
    pub latency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseSpec {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: Headers,
    /// Text as given, or a mapping or list sent as JSON.
    #[serde(default)]
    pub body: Option<BodySpec>,
    /// The sizes of the chunks the body arrives in (default: one chunk).
    #[serde(default)]
    pub chunks: Vec<usize>,
    #[serde(default)]
    pub trailers: Headers,
}

fn ok() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// 0 answers with `message`; any other status closes the call with
    /// `error` as the upstream's `grpc-message`.
    #[serde(default)]
    pub status: u32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub error: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcStreamSpec {
    #[serde(default)]
    pub initial_metadata: Headers,
    /// The messages, in order (text).
    #[serde(default)]
    pub messages: Vec<String>,
    #[serde(default)]
    pub trailing_metadata: Headers,
    /// The status it closes with, and its `grpc-message` when not 0.
    #[serde(default)]
    pub status: u32,
    #[serde(default)]
    pub error: String,
}

/// One step: a request, time passing, or the VM's shutdown.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub request: Option<RequestSpec>,
    /// The sizes of the chunks the request body is sent in.
    #[serde(default)]
    pub body_chunks: Vec<usize>,
    /// Request trailers, after the body.
    #[serde(default)]
    pub trailers: Option<Headers>,
    /// The upstream's answer to this request, instead of its cluster's.
    #[serde(default)]
    pub response: Option<ResponseSpec>,
    /// Moves the virtual clock on (`350ms`, `2s`, `1m`), ticking the filter.
    #[serde(default)]
    pub advance: Option<String>,
    /// Shuts the VM down (`proxy_on_done`, `proxy_on_delete`).
    #[serde(default)]
    pub shutdown: Option<bool>,
    /// What the step's report must contain (a subset of it).
    #[serde(default)]
    pub expect: Option<Value>,
}

impl ResponseSpec {
    fn response(&self) -> Response {
        let body = self.body.as_ref().map(BodySpec::text).unwrap_or_default();
        let mut headers: HeaderMap = self
            .headers
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_bytes()))
            .collect();
        if let Some(content_type) = self.body.as_ref().and_then(BodySpec::content_type) {
            if !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push(("content-type".into(), content_type.as_bytes().to_vec()));
            }
        }
        if !body.is_empty() && !headers.iter().any(|(k, _)| k == "content-length") {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        Response {
            status: self.status,
            headers,
            body: body.into_bytes(),
            chunk_sizes: self.chunks.clone(),
            trailers: pairs(&self.trailers),
        }
    }
}

fn pairs(headers: &Headers) -> HeaderMap {
    headers
        .pairs()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.into_bytes()))
        .collect()
}

/// What a run showed: one report per step, and the expectations that failed.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub steps: Vec<Value>,
    /// Metrics and shared data at the end.
    pub end: Value,
    pub failures: Vec<String>,
}

impl Script {
    pub fn parse(text: &str) -> Result<Script> {
        let script: Script = serde_yaml::from_str(text)?;
        for (i, step) in script.steps.iter().enumerate() {
            let kinds = [
                step.request.is_some(),
                step.advance.is_some(),
                step.shutdown.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                bail!("steps[{i}]: a step is exactly one of request, advance or shutdown");
            }
            let request_only =
                !step.body_chunks.is_empty() || step.trailers.is_some() || step.response.is_some();
            if request_only && step.request.is_none() {
                bail!("steps[{i}]: body_chunks, trailers and response belong to a request step");
            }
            if let Some(text) = &step.advance {
                duration(text).with_context(|| format!("steps[{i}].advance"))?;
            }
        }
        for (name, cluster) in &script.clusters {
            if let Some(text) = &cluster.latency {
                duration(text).with_context(|| format!("clusters.{name}.latency"))?;
            }
        }
        if let Some(route) = &script.route {
            match (&route.cluster, &route.cluster_header) {
                // Envoy refuses a static route to a cluster it does not have.
                (Some(cluster), None) if !script.clusters.contains_key(cluster) => bail!(
                    "route.cluster: '{cluster}' is not one of the clusters ({})",
                    script
                        .clusters
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                (Some(_), None) | (None, Some(_)) => {}
                _ => bail!("route: give either cluster or cluster_header"),
            }
        }
        Ok(script)
    }

    /// The environment the script describes: clock, clusters, route.
    pub fn environment(&self) -> Result<Environment> {
        let clock = match self.clock.as_deref() {
            Some("system") => Clock::System,
            other => {
                let text = other.unwrap_or(DEFAULT_START);
                let time = chrono::DateTime::parse_from_rfc3339(text).map_err(|e| {
                    anyhow!("clock: '{text}' is neither an RFC 3339 time nor 'system' ({e})")
                })?;
                let nanos = time
                    .timestamp_nanos_opt()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| anyhow!("clock: '{text}' is out of range"))?;
                Clock::virtual_at(nanos)
            }
        };
        let environment = Environment {
            clock,
            ..Environment::default()
        };
        let upstreams = &environment.upstreams;
        upstreams.define_clusters(self.clusters.keys().map(String::as_str));
        for (name, cluster) in &self.clusters {
            if let Some(response) = &cluster.response {
                upstreams.answer(name, response.response());
            }
            if let Some(grpc) = &cluster.grpc {
                upstreams.answer_grpc(
                    name,
                    GrpcReply {
                        status: grpc.status,
                        message: grpc.message.clone().into_bytes(),
                        error_message: grpc.error.clone(),
                    },
                );
            }
            if let Some(stream) = &cluster.grpc_stream {
                upstreams.answer_grpc_stream(
                    name,
                    GrpcStreamReply {
                        initial_metadata: pairs(&stream.initial_metadata),
                        messages: stream
                            .messages
                            .iter()
                            .map(|m| m.clone().into_bytes())
                            .collect(),
                        trailing_metadata: pairs(&stream.trailing_metadata),
                        status: stream.status,
                        error_message: stream.error.clone(),
                    },
                );
            }
            if let Some(text) = &cluster.latency {
                upstreams.delay(name, Duration::from_millis(duration(text)?));
            }
        }
        match &self.route {
            Some(RouteSpec {
                cluster: Some(cluster),
                ..
            }) => upstreams.route_to(cluster),
            Some(RouteSpec {
                cluster_header: Some(header),
                ..
            }) => upstreams.route_by(header),
            _ => {}
        }
        Ok(environment)
    }

    /// Runs the script. `configuration` and `vm_configuration` replace the
    /// script's when given (the command line's files).
    pub fn run(
        &self,
        module: &FilterModule,
        configuration: Option<Vec<u8>>,
        vm_configuration: Option<Vec<u8>>,
    ) -> Result<Outcome> {
        let environment = self.environment()?;
        let configuration = configuration
            .or_else(|| self.configuration.clone().map(String::into_bytes))
            .unwrap_or_default();
        let vm_configuration = vm_configuration
            .or_else(|| self.vm_configuration.clone().map(String::into_bytes))
            .unwrap_or_default();
        let mut vm = module
            .start_with(&environment, &vm_configuration, &configuration)
            .map_err(|e| anyhow!("the filter did not start: {e}"))?;
        let mut steps = Vec::new();
        let mut failures = Vec::new();
        let start_logs = logs(&vm.take_logs());
        let mut root_calls = 0;
        let mut shut = false;
        for (i, step) in self.steps.iter().enumerate() {
            if shut {
                bail!("steps[{i}]: the VM was shut down by an earlier step");
            }
            let mut report = Map::new();
            report.insert("step".into(), json!(i + 1));
            if i == 0 && !start_logs.is_empty() {
                report.insert("start_logs".into(), Value::Array(start_logs.clone()));
            }
            if let Some(spec) = &step.request {
                let record = request(&mut vm, &environment, step, spec)
                    .map_err(|e| anyhow!("steps[{i}]: {e}"))?;
                describe_request(&mut report, spec, &record);
            } else if let Some(text) = &step.advance {
                let by = Duration::from_millis(duration(text)?);
                let ticks = vm
                    .advance(by)
                    .map_err(|e| anyhow!("steps[{i}].advance: {e}"))?;
                report.insert("advance".into(), json!(text));
                report.insert("ticks".into(), json!(ticks));
                report.insert("logs".into(), Value::Array(logs(&vm.take_logs())));
            } else {
                let shutdown = vm.shutdown().map_err(|e| anyhow!("steps[{i}]: {e}"))?;
                report.insert("shutdown".into(), json!({ "deleted": shutdown.deleted }));
                report.insert("logs".into(), Value::Array(logs(&shutdown.logs)));
                shut = true;
            }
            // Callouts the root context made during this step (ticks).
            let calls: Vec<Value> = vm.http_calls()[root_calls..]
                .iter()
                .filter(|c| c.context == 1)
                .map(|c| {
                    json!({ "cluster": c.upstream, "headers": header_object(&c.headers),
                            "body": text(&c.body), "answered": c.answered })
                })
                .collect();
            root_calls = vm.http_calls().len();
            if !calls.is_empty() {
                report.insert("root_callouts".into(), Value::Array(calls));
            }
            let report = Value::Object(report);
            if let Some(expected) = &step.expect {
                let mut differences = Vec::new();
                compare(expected, &report, "", &mut differences);
                for difference in differences {
                    failures.push(format!("step {} ({}): {difference}", i + 1, title(step)));
                }
            }
            steps.push(report);
        }
        let metrics: Map<String, Value> = vm
            .metrics()
            .into_iter()
            .map(|(name, value)| (name, json!(value)))
            .collect();
        let shared: Map<String, Value> = environment
            .shared
            .lock()
            .data
            .iter()
            .map(|(k, (v, _))| (k.clone(), json!(text(v))))
            .collect();
        Ok(Outcome {
            steps,
            end: json!({ "metrics": metrics, "shared_data": shared }),
            failures,
        })
    }
}

/// A step's name in messages: `GET /path`, `advance 1s`, `shutdown`.
pub fn title(step: &Step) -> String {
    if let Some(spec) = &step.request {
        format!(
            "{} {}",
            spec.method.as_deref().unwrap_or("GET"),
            spec.path.as_deref().unwrap_or("/")
        )
    } else if let Some(text) = &step.advance {
        format!("advance {text}")
    } else {
        "shutdown".into()
    }
}

fn duration(text: &str) -> Result<u64> {
    celroute::engine::parse_duration(text)
        .ok_or_else(|| anyhow!("'{text}' is not a duration such as 250ms, 2s or 1m"))
}

/// One request through the filter as Envoy would take it.
fn request(
    vm: &mut Vm,
    environment: &Environment,
    step: &Step,
    spec: &RequestSpec,
) -> Result<RequestRecord> {
    let fault = |e: crate::vm::GuestFault| anyhow!("{e}");
    let body = vm.begin(spec).map_err(fault)?;
    let ends_with_headers = body.is_empty() && step.trailers.is_none();
    vm.request_headers(ends_with_headers).map_err(fault)?;
    vm.deliver_callouts().map_err(fault)?;
    if !body.is_empty() {
        let chunks = Response {
            body: body.clone(),
            chunk_sizes: step.body_chunks.clone(),
            ..Response::default()
        };
        let chunks = chunks.chunks();
        for (i, chunk) in chunks.iter().enumerate() {
            if matches!(vm.flow(), Flow::Replied | Flow::Reset) {
                break;
            }
            let end = i + 1 == chunks.len() && step.trailers.is_none();
            vm.request_body(chunk, end).map_err(fault)?;
            vm.deliver_callouts().map_err(fault)?;
        }
    }
    if let Some(trailers) = &step.trailers {
        if matches!(vm.flow(), Flow::Continue | Flow::Paused) {
            vm.request_trailers(pairs(trailers)).map_err(fault)?;
            vm.deliver_callouts().map_err(fault)?;
        }
    }
    // Paused on a callout nobody answers: on a virtual clock, wait for its
    // timeout as Envoy would (a real clock is not moved).
    if vm.flow() == Flow::Paused && matches!(environment.clock, Clock::Virtual(_)) {
        vm.wait_for_callouts()?;
    }
    if vm.flow() == Flow::Continue {
        let upstreams = &environment.upstreams;
        let headers = &vm.state().exchange.request_headers.clone();
        match upstreams.cluster_of(headers) {
            Some(cluster) if upstreams.knows(&cluster) => {
                let response = match &step.response {
                    Some(response) => response.response(),
                    None => upstreams.response(Some(&cluster)),
                };
                let _ = environment.clock.advance(upstreams.latency(Some(&cluster)));
                vm.upstream_response(Some(cluster), &response)
                    .map_err(fault)?;
            }
            // A request header naming no cluster, or one Envoy does not
            // have: its router's answer.
            _ => {
                vm.upstream_response(
                    None,
                    &Response {
                        status: NO_CLUSTER_STATUS,
                        ..Response::default()
                    },
                )
                .map_err(fault)?;
            }
        }
    }
    vm.finish().map_err(fault)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Headers as a JSON object; a repeated header's values as a list.
fn header_object(headers: &HeaderMap) -> Value {
    let mut object = Map::new();
    for (name, value) in headers {
        let value = json!(text(value));
        match object.get_mut(name) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = json!([first.clone(), value]),
            None => {
                object.insert(name.clone(), value);
            }
        }
    }
    Value::Object(object)
}

fn logs(lines: &[crate::abi::LogLine]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| json!(format!("{}: {}", l.level_name(), l.message)))
        .collect()
}

fn describe_request(report: &mut Map<String, Value>, spec: &RequestSpec, record: &RequestRecord) {
    report.insert(
        "request".into(),
        json!(format!(
            "{} {}",
            spec.method.as_deref().unwrap_or("GET"),
            spec.path.as_deref().unwrap_or("/")
        )),
    );
    let outcome = if record.reset {
        "reset"
    } else if record.local_response.is_some() {
        "local_reply"
    } else if record.paused {
        "paused"
    } else if record.upstream_cluster.is_some() {
        "upstream"
    } else {
        "no_route"
    };
    report.insert("outcome".into(), json!(outcome));
    if record.upstream_cluster.is_some() {
        report.insert(
            "upstream".into(),
            json!({
                "cluster": record.upstream_cluster,
                "headers": header_object(&record.upstream_headers),
                "body": text(&record.upstream_body),
            }),
        );
    }
    if let Some(status) = record.response_code {
        let mut headers = record.response_headers.clone();
        headers.retain(|(k, _)| k != ":status");
        let mut response = json!({
            "status": status,
            "headers": header_object(&headers),
            "body": text(&record.response_body),
        });
        if !record.response_trailers.is_empty() {
            response["trailers"] = header_object(&record.response_trailers);
        }
        report.insert("response".into(), response);
    }
    if let Some(local) = &record.local_response {
        report.insert("local_reply_details".into(), json!(local.details));
    }
    let calls: Vec<Value> = record
        .http_calls
        .iter()
        .map(|c| {
            json!({ "cluster": c.upstream, "headers": header_object(&c.headers),
                    "body": text(&c.body), "timeout_ms": c.timeout_ms, "answered": c.answered })
        })
        .collect();
    if !calls.is_empty() {
        report.insert("callouts".into(), Value::Array(calls));
    }
    let calls: Vec<Value> = record
        .grpc_calls
        .iter()
        .map(|c| {
            json!({ "cluster": c.cluster, "service": c.service, "method": c.method,
                    "message": text(&c.message), "state": format!("{:?}", c.state).to_lowercase() })
        })
        .collect();
    if !calls.is_empty() {
        report.insert("grpc_calls".into(), Value::Array(calls));
    }
    let streams: Vec<Value> = record
        .grpc_streams
        .iter()
        .map(|s| {
            let sent: Vec<String> = s.sent.iter().map(|m| text(m)).collect();
            json!({ "cluster": s.cluster, "service": s.service, "method": s.method,
                    "sent": sent, "local_closed": s.local_closed,
                    "state": format!("{:?}", s.state).to_lowercase() })
        })
        .collect();
    if !streams.is_empty() {
        report.insert("grpc_streams".into(), Value::Array(streams));
    }
    if !record.properties.is_empty() {
        let mut properties: Vec<(String, Value)> = record
            .properties
            .iter()
            .map(|(path, value)| (path.join("."), json!(text(value))))
            .collect();
        properties.sort_by(|a, b| a.0.cmp(&b.0));
        report.insert(
            "properties_set".into(),
            Value::Object(properties.into_iter().collect()),
        );
    }
    if record.route_cache_clears > 0 {
        report.insert(
            "route_cache_clears".into(),
            json!(record.route_cache_clears),
        );
    }
    report.insert("logs".into(), Value::Array(logs(&record.logs)));
}

/// Where `actual` departs from `expected`: every key of an expected object
/// must be in the actual one with a matching value; lists match item by
/// item; other values are equal.
pub fn compare(expected: &Value, actual: &Value, at: &str, out: &mut Vec<String>) {
    let here = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, value) in want {
                match got.get(key) {
                    Some(actual) => compare(value, actual, &here(key), out),
                    None => out.push(format!("{}: expected {value}, absent", here(key))),
                }
            }
        }
        (Value::Array(want), Value::Array(got)) if want.len() == got.len() => {
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                compare(w, g, &format!("{at}[{i}]"), out);
            }
        }
        _ if expected == actual => {}
        _ => out.push(format!(
            "{}: expected {expected}, got {actual}",
            if at.is_empty() { "(step)" } else { at }
        )),
    }
}
