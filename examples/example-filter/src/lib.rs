//! An example proxy-wasm filter for `policy-host run`: what it does is
//! chosen by the request path, so one module exercises the parts of the ABI
//! a routing filter rarely needs.
//!
//! | path | what the filter does |
//! |---|---|
//! | `/local/STATUS` | a local reply `STATUS` with header `X-Example: local` (mixed case on purpose) and a text body |
//! | `/grpc-local/CODE` | a gRPC-shaped local reply: grpc-status `CODE`, message `refused by example-filter` |
//! | `/callout/CLUSTER[?timeout_ms=N]` | pauses, calls `GET /info` on `CLUSTER` (timeout N ms, default 5000), then answers 200 with the callout's status in `x-callout-status` and its body |
//! | `/grpc-call/CLUSTER[?timeout_ms=N]` | pauses, calls `example.Echo/Say` on `CLUSTER` with message `hello` (timeout N ms, default 5000), then answers with the gRPC status and message |
//! | `/reset` | resets the stream: the client gets no response |
//! | `/property` | sets the property `example.note` to `noted`, then answers with what reading it back and reading an unset one give |
//! | `/grpc-stream/CLUSTER` | pauses, opens a stream to `example.Echo/Chat` on `CLUSTER`, sends `one` and `two` (ending its side), then answers with what came back: the `x-meta` initial metadata, the messages, the `x-trailer` trailing metadata, the status and message |
//! | `/ticks` | answers with the ticks counted so far, the time of the last one and the time now (nanoseconds since the epoch) |
//! | `/upper` | upper-cases the request body, then passes the request on |
//! | `/metric-ops` | tries metric operations (a negative counter increment, a gauge decrement, recording a counter) and answers with each result and the values read back |
//! | anything else | adds `x-example-seen: yes` to the request and `X-Example-Upstream: seen` to the response |
//!
//! Every request counts in the counter `example_requests` (in `on_log`) and
//! leaves its response status in the gauge `example_last_status`. The VM
//! configuration, if any, is echoed in `/ticks` answers; the plugin
//! configuration is a tick period in milliseconds (empty: no ticks).
//!
//! `cargo build -p example-filter --target wasm32-wasip1 --release`

/// The key of the tick record in shared data: `count,last_tick_nanos`.
pub const TICKS_KEY: &str = "example.ticks";

/// What a request path asks the filter to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Local(u32),
    GrpcLocal(i32),
    /// The cluster, and the timeout in milliseconds.
    Callout(String, u64),
    /// The cluster, and the timeout in milliseconds.
    GrpcCall(String, u64),
    GrpcStream(String),
    Property,
    Reset,
    Ticks,
    Upper,
    MetricOps,
    PassOn,
}

impl Action {
    /// The action a request path (`:path`, query and all) asks for.
    pub fn of(path: &str) -> Action {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let timeout_ms = query
            .split('&')
            .find_map(|p| p.strip_prefix("timeout_ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(5_000);
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (head, rest) = (parts.next().unwrap_or_default(), parts.next());
        match (head, rest) {
            ("local", Some(status)) => status.parse().map_or(Action::PassOn, Action::Local),
            ("grpc-local", Some(code)) => code.parse().map_or(Action::PassOn, Action::GrpcLocal),
            ("callout", Some(cluster)) if !cluster.is_empty() => {
                Action::Callout(cluster.into(), timeout_ms)
            }
            ("grpc-call", Some(cluster)) if !cluster.is_empty() => {
                Action::GrpcCall(cluster.into(), timeout_ms)
            }
            ("property", None) => Action::Property,
            ("reset", None) => Action::Reset,
            ("grpc-stream", Some(cluster)) if !cluster.is_empty() => {
                Action::GrpcStream(cluster.into())
            }
            ("ticks", None) => Action::Ticks,
            ("upper", None) => Action::Upper,
            ("metric-ops", None) => Action::MetricOps,
            _ => Action::PassOn,
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod filter {
    use std::time::{Duration, UNIX_EPOCH};

    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel, MetricType};

    use super::{Action as Todo, TICKS_KEY};

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Trace);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::<Root>::default() });
    }}

    #[derive(Default)]
    struct Root {
        vm_configuration: String,
        ticks: u64,
        metrics: Metrics,
    }

    /// Metric ids: a counter and a gauge.
    #[derive(Default, Clone, Copy)]
    struct Metrics {
        requests: u32,
        last_status: u32,
    }

    fn nanos(time: std::time::SystemTime) -> u128 {
        time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    }

    impl Context for Root {
        fn on_done(&mut self) -> bool {
            proxy_wasm::hostcalls::log(LogLevel::Info, "example-filter: done").ok();
            true
        }
    }

    impl RootContext for Root {
        fn on_vm_start(&mut self, _: usize) -> bool {
            self.vm_configuration = self
                .get_vm_configuration()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let started = nanos(self.get_current_time());
            proxy_wasm::hostcalls::log(
                LogLevel::Info,
                &format!("example-filter: VM started at {started}"),
            )
            .ok();
            true
        }

        fn on_configure(&mut self, _: usize) -> bool {
            let counter = hostcalls::define_metric(MetricType::Counter, "example_requests");
            let gauge = hostcalls::define_metric(MetricType::Gauge, "example_last_status");
            if let (Ok(requests), Ok(last_status)) = (counter, gauge) {
                self.metrics = Metrics {
                    requests,
                    last_status,
                };
            }
            let text = self
                .get_plugin_configuration()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default();
            if text.is_empty() {
                return true;
            }
            match text.parse::<u64>() {
                Ok(ms) => {
                    self.set_tick_period(Duration::from_millis(ms));
                    true
                }
                Err(_) => {
                    proxy_wasm::hostcalls::log(
                        LogLevel::Error,
                        &format!("example-filter: configuration '{text}' is not a tick period in milliseconds"),
                    )
                    .ok();
                    false
                }
            }
        }

        fn on_tick(&mut self) {
            self.ticks += 1;
            let record = format!("{},{}", self.ticks, nanos(self.get_current_time()));
            let _ = self.set_shared_data(TICKS_KEY, Some(record.as_bytes()), None);
        }

        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                todo: Todo::PassOn,
                vm_configuration: self.vm_configuration.clone(),
                metrics: self.metrics,
                received: Vec::new(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct Stream {
        todo: Todo,
        vm_configuration: String,
        metrics: Metrics,
        /// What a gRPC stream brought back, in order.
        received: Vec<String>,
    }

    impl Stream {
        fn answer(&self, status: u32, headers: Vec<(&str, &str)>, body: &str) -> Action {
            self.send_http_response(status, headers, Some(body.as_bytes()));
            Action::Pause
        }
    }

    impl Context for Stream {
        fn on_http_call_response(&mut self, _: u32, _: usize, body_size: usize, _: usize) {
            let status = self
                .get_http_call_response_header(":status")
                .unwrap_or_default();
            let body = self
                .get_http_call_response_body(0, body_size)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            self.answer(200, vec![("x-callout-status", &status)], &body);
        }

        fn on_grpc_call_response(&mut self, _: u32, status_code: u32, size: usize) {
            let message = self
                .get_grpc_call_response_body(0, size)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let (_, status_message) = self.get_grpc_status();
            let status = status_code.to_string();
            let body = if status_code == 0 {
                message
            } else {
                status_message.unwrap_or_default()
            };
            self.answer(200, vec![("x-grpc-call-status", &status)], &body);
        }

        fn on_grpc_stream_initial_metadata(&mut self, _: u32, _: u32) {
            let meta = self.get_grpc_stream_initial_metadata_value("x-meta");
            let meta = meta.map(|b| String::from_utf8_lossy(&b).into_owned());
            self.received
                .push(format!("meta={}", meta.unwrap_or_default()));
        }

        fn on_grpc_stream_message(&mut self, _: u32, size: usize) {
            let message = self.get_grpc_stream_message(0, size);
            let message = message.map(|b| String::from_utf8_lossy(&b).into_owned());
            self.received
                .push(format!("message={}", message.unwrap_or_default()));
        }

        fn on_grpc_stream_trailing_metadata(&mut self, _: u32, _: u32) {
            let trailer = self.get_grpc_stream_trailing_metadata_value("x-trailer");
            let trailer = trailer.map(|b| String::from_utf8_lossy(&b).into_owned());
            self.received
                .push(format!("trailer={}", trailer.unwrap_or_default()));
        }

        fn on_grpc_stream_close(&mut self, _: u32, status_code: u32) {
            let (_, message) = self.get_grpc_status();
            self.received.push(format!(
                "close={status_code} {}",
                message.unwrap_or_default()
            ));
            let body = self.received.join("; ") + "\n";
            self.answer(200, vec![], &body);
        }
    }

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            self.todo = Todo::of(&self.get_http_request_header(":path").unwrap_or_default());
            match &self.todo {
                Todo::Local(status) => self.answer(
                    *status,
                    vec![("X-Example", "local")],
                    "refused by example-filter\n",
                ),
                Todo::GrpcLocal(code) => {
                    let code = grpc_code(*code);
                    self.send_grpc_response(
                        code,
                        Some("refused by example-filter"),
                        vec![("X-Example", b"local")],
                    );
                    Action::Pause
                }
                Todo::Callout(cluster, timeout_ms) => {
                    let headers = vec![
                        (":method", "GET"),
                        (":path", "/info"),
                        (":authority", cluster.as_str()),
                    ];
                    match self.dispatch_http_call(
                        cluster,
                        headers,
                        None,
                        vec![],
                        Duration::from_millis(*timeout_ms),
                    ) {
                        Ok(_) => Action::Pause,
                        Err(status) => self.answer(
                            500,
                            vec![],
                            &format!("callout to {cluster} refused: {status:?}\n"),
                        ),
                    }
                }
                Todo::Reset => {
                    self.reset_http_request();
                    Action::Pause
                }
                Todo::Property => {
                    self.set_property(vec!["example.note"], Some(b"noted"));
                    let read = |path: Vec<&str>| {
                        self.get_property(path)
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                    };
                    let body = format!(
                        "set {:?}; unset {:?}\n",
                        read(vec!["example.note"]),
                        read(vec!["example.other"])
                    );
                    self.answer(200, vec![], &body)
                }
                Todo::GrpcCall(cluster, timeout_ms) => {
                    match self.dispatch_grpc_call(
                        cluster,
                        "example.Echo",
                        "Say",
                        vec![],
                        Some(b"hello"),
                        Duration::from_millis(*timeout_ms),
                    ) {
                        Ok(_) => Action::Pause,
                        Err(status) => self.answer(
                            500,
                            vec![],
                            &format!("gRPC call to {cluster} refused: {status:?}\n"),
                        ),
                    }
                }
                Todo::GrpcStream(cluster) => {
                    match self.open_grpc_stream(cluster, "example.Echo", "Chat", vec![]) {
                        Ok(token) => {
                            self.send_grpc_stream_message(token, Some(b"one"), false);
                            self.send_grpc_stream_message(token, Some(b"two"), true);
                            Action::Pause
                        }
                        Err(status) => self.answer(
                            500,
                            vec![],
                            &format!("gRPC stream to {cluster} refused: {status:?}\n"),
                        ),
                    }
                }
                Todo::Ticks => {
                    let (record, _) = self.get_shared_data(TICKS_KEY);
                    let record = record.map(|b| String::from_utf8_lossy(&b).into_owned());
                    let (count, last) = record
                        .as_deref()
                        .and_then(|r| r.split_once(','))
                        .unwrap_or(("0", "0"));
                    let now = nanos(self.get_current_time());
                    let vm = &self.vm_configuration;
                    let body = format!(
                        "{{\"ticks\":{count},\"last_tick_nanos\":{last},\"now_nanos\":{now},\"vm_configuration\":\"{vm}\"}}"
                    );
                    self.answer(200, vec![("content-type", "application/json")], &body)
                }
                Todo::MetricOps => {
                    let Metrics {
                        requests,
                        last_status,
                    } = self.metrics;
                    let body = format!(
                        "counter-1 {:?}; gauge-5 {:?}; gauge now {:?}; record counter 3 {:?}; counter now {:?}\n",
                        hostcalls::increment_metric(requests, -1),
                        hostcalls::increment_metric(last_status, -5),
                        hostcalls::get_metric(last_status),
                        hostcalls::record_metric(requests, 3),
                        hostcalls::get_metric(requests),
                    );
                    self.answer(200, vec![], &body)
                }
                Todo::Upper => Action::Continue,
                Todo::PassOn => {
                    self.set_http_request_header("x-example-seen", Some("yes"));
                    Action::Continue
                }
            }
        }

        fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
            if self.todo != Todo::Upper {
                return Action::Continue;
            }
            if !end_of_stream {
                return Action::Pause;
            }
            if let Some(body) = self.get_http_request_body(0, size) {
                self.set_http_request_body(0, size, &body.to_ascii_uppercase());
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            let status = self.get_http_response_header(":status").unwrap_or_default();
            let _ = hostcalls::record_metric(self.metrics.last_status, status.parse().unwrap_or(0));
            match self.todo {
                // A local reply's headers as the filter sees them again.
                Todo::Local(_) => self.set_http_response_header("x-example", Some("local, seen")),
                Todo::PassOn | Todo::Upper => {
                    self.add_http_response_header("X-Example-Upstream", "seen")
                }
                _ => {}
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            let _ = hostcalls::increment_metric(self.metrics.requests, 1);
        }
    }

    fn grpc_code(code: i32) -> GrpcStatusCode {
        use GrpcStatusCode::*;
        [
            Ok,
            Cancelled,
            Unknown,
            InvalidArgument,
            DeadlineExceeded,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            ResourceExhausted,
            FailedPrecondition,
            Aborted,
            OutOfRange,
            Unimplemented,
            Internal,
            Unavailable,
            DataLoss,
            Unauthenticated,
        ]
        .get(code as usize)
        .copied()
        .unwrap_or(Unknown)
    }
}
