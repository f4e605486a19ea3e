//! The Envoy side of the benchmark: configurations with each filter under
//! comparison (none, the header-only floor, Lua, an external processor,
//! celroute) on loopback, the upstream of their proxied route, the external
//! processor's process, and the check that two of them decide alike. Used by
//! `bench-envoy` and by the tests.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::bench::{self, CLUSTERS};
use crate::envoy::{free_port, Config, Envoy};
use crate::http::Connection;

pub const ROUTING_HEADER: &str = "x-celroute-cluster";
/// The cluster of the external processor in the ext_proc configuration.
pub const EXT_PROC_CLUSTER: &str = "celroute_ext_proc";

/// What a celroute configuration adds to the `n`-rule policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The policy as it is.
    Plain,
    /// Also requires `cluster.live.healthy`, so the filter observes every
    /// response and keeps a live snapshot.
    Live,
    /// Also prefers a cluster by `request.body.model`, so the filter holds
    /// each request until its body is complete.
    BodyModel,
    /// Also counts usage (`usage:`), so the filter reads every response
    /// body for its tokens.
    Usage,
    /// Also keeps a decision log (`options.decision_log`): a record per
    /// decision and per routed response, set as filter state (the
    /// benchmark's Envoy writes no access log, so this is the filter's cost).
    DecisionLog,
}

/// What runs in Envoy's filter chain.
#[derive(Clone, Debug)]
pub enum Filter {
    None,
    HeaderOnly,
    Lua {
        rules: usize,
    },
    /// Envoy's ext_proc filter asking an external processor (gRPC on
    /// 127.0.0.1:`port`, such as `celroute-ext-proc`) for each request's
    /// headers; the processor decides.
    ExtProc {
        rules: usize,
        port: u16,
    },
    Celroute {
        rules: usize,
        cache: bool,
        variant: Variant,
    },
}

fn wasm_filter(name: &str, code: &Path, configuration: &str) -> serde_json::Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "allow_on_headers_stop_iteration": true,
                "vm_config": {
                    "vm_id": name,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": code.display().to_string()}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        },
    })
}

pub fn envoy_config(filter: &Filter, upstream: u16, wasm_dir: &Path) -> Result<Config> {
    let mut http_filters = Vec::new();
    match filter {
        Filter::None => {}
        Filter::HeaderOnly => http_filters.push(wasm_filter(
            "header_only",
            &wasm_dir.join("header_only.wasm"),
            "",
        )),
        Filter::Lua { rules } => http_filters.push(json!({
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": bench::lua(*rules, ROUTING_HEADER)},
            },
        })),
        Filter::ExtProc { .. } => http_filters.push(json!({
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": EXT_PROC_CLUSTER}, "timeout": "1s"},
                "failure_mode_allow": false,
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SKIP",
                    "request_body_mode": "NONE",
                    "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
            },
        })),
        Filter::Celroute {
            rules,
            cache,
            variant,
        } => {
            let policy = bench::policy_yaml(*rules, (!cache).then_some(0));
            let policy = match variant {
                Variant::Plain => policy,
                Variant::Live => bench::with_live_health(&policy),
                Variant::BodyModel => bench::with_body_model(&policy),
                Variant::Usage => bench::with_usage(&policy),
                Variant::DecisionLog => bench::with_decision_log(&policy),
            };
            http_filters.push(wasm_filter(
                "celroute",
                &wasm_dir.join("celroute.wasm"),
                &policy,
            ))
        }
    }
    // Without a filter there is no routing header: proxy to one cluster.
    let proxied = match filter {
        Filter::None => json!({"cluster": "cluster-0"}),
        _ => json!({"cluster_header": ROUTING_HEADER}),
    };
    let mut clusters: Vec<_> = (0..CLUSTERS)
        .map(|i| {
            json!({
                "name": bench::cluster(i).0,
                "connect_timeout": "1s",
                "type": "STATIC",
                "load_assignment": {
                    "cluster_name": bench::cluster(i).0,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}],
                },
            })
        })
        .collect();
    if let Filter::ExtProc { port, .. } = filter {
        clusters.push(json!({
            "name": EXT_PROC_CLUSTER,
            "connect_timeout": "1s",
            "type": "STATIC",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                },
            },
            "load_assignment": {
                "cluster_name": EXT_PROC_CLUSTER,
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
            },
        }));
    }
    let routes = json!([
        {
            "match": {"prefix": "/v1/direct"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
            "response_headers_to_add": [{"header": {"key": "x-chosen", "value": format!("%REQ({ROUTING_HEADER})%")}}],
        },
        {"match": {"prefix": "/v1/proxied"}, "route": proxied},
    ]);
    listener_config("bench", routes, http_filters, clusters)
}

/// An Envoy config with one HTTP listener on a free loopback port (and a
/// free admin port): `routes` in one virtual host, `http_filters` then the router.
fn listener_config(
    name: &str,
    routes: serde_json::Value,
    mut http_filters: Vec<serde_json::Value>,
    clusters: Vec<serde_json::Value>,
) -> Result<Config> {
    let listener_port = free_port()?;
    let admin_port = free_port()?;
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }));
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": name,
                        "route_config": {"virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    });
    Ok(Config {
        yaml: serde_yaml::to_value(&config)?,
        listener_port,
        admin_port,
        ipv6: false,
    })
}

/// The upstream of the proxied routes: an Envoy answering every request
/// itself, `/v1/proxied/stream` with a streamed chat completion (server-sent
/// events, usage in the last event).
pub fn upstream_config() -> Result<Config> {
    let routes = json!([
        {
            "match": {"prefix": "/v1/proxied/stream"},
            "direct_response": {"status": 200, "body": {"inline_string": bench::SSE_COMPLETION}},
            "response_headers_to_add": [{
                "header": {"key": "content-type", "value": "text/event-stream"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
        },
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "upstream ok"}}},
    ]);
    listener_config("upstream", routes, Vec::new(), Vec::new())
}

/// One request on a fresh connection: status, the cluster the route saw, and
/// the body (as JSON when it is JSON, so that key order does not matter).
pub fn probe(
    envoy: &Envoy,
    path: &str,
    headers: &[(String, String)],
) -> Result<(u16, String, serde_json::Value)> {
    let headers: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let reply = Connection::open(envoy.listener)?.send("GET", path, &headers, b"")?;
    let body = serde_json::from_str(&reply.body)
        .unwrap_or_else(|_| serde_json::Value::String(reply.body.clone()));
    Ok((
        reply.status,
        reply.header("x-chosen").unwrap_or_default().to_string(),
        body,
    ))
}

/// Sends every request in `requests` to both Envoys (direct-response route)
/// and fails on the first one they answer differently: status, chosen
/// cluster or body. Returns how many were compared.
pub fn same_decisions(
    (a_name, a): (&str, &Envoy),
    (b_name, b): (&str, &Envoy),
    requests: &[Vec<(String, String)>],
) -> Result<usize> {
    for headers in requests {
        let x = probe(a, "/v1/direct/chat", headers)?;
        let y = probe(b, "/v1/direct/chat", headers)?;
        if x != y {
            bail!("'{a_name}' and '{b_name}' decide {headers:?} differently: {x:?} vs {y:?}");
        }
    }
    Ok(requests.len())
}

/// `celroute-ext-proc` running as its own process on a free loopback port,
/// deciding with `policy`; stopped when dropped.
pub struct ExtProcess {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl ExtProcess {
    pub fn start(binary: &Path, policy: &str) -> Result<ExtProcess> {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("policy.yaml");
        std::fs::write(&file, policy)?;
        let mut child = std::process::Command::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--policy")
            .arg(&file)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            std::io::BufReader::new(stdout).read_line(&mut line)?;
        }
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port());
        match port {
            Some(port) => Ok(ExtProcess {
                child,
                port,
                _dir: dir,
            }),
            None => {
                let _ = child.kill();
                let status = child.wait()?;
                bail!("{} did not start ({status}): {line:?}", binary.display())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ExtProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
