//! The inference API through real Envoy: the model in the JSON body routes
//! (keep-alive and HTTP/2), bodies the policy cannot read get their
//! documented status, streams pass through, token and cost stats match what
//! the clouds reported, and the official OpenAI Python SDK works end to end.

// Test helpers may fail loudly: a failure here is a failed test, not a crashed proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use celroute_tests::http::{Connection, Reply};
use celroute_tests::{read_policy, repo_root, Stack};

fn stack() -> Stack {
    let policy = read_policy("model-routing.yaml").expect("policy");
    Stack::start(|config| config.with_policy(&policy)).expect("clouds and Envoy start")
}

fn post(connection: &mut Connection, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        all.push(("content-type", b"application/json"));
    }
    connection
        .send("POST", path, &all, body.as_bytes())
        .expect("a reply")
}

fn chat_body(model: &str) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
        .to_string()
}

#[test]
fn the_model_in_the_body_routes_on_keep_alive_and_http2() {
    let s = stack();
    let mut connection = Connection::open(s.envoy.listener).unwrap();
    // One connection, several requests: each decided on its own body.
    for (path, body, cloud) in [
        (
            "/v1/chat/completions",
            chat_body("o3-mini"),
            "gcp-europe-west4",
        ),
        (
            "/v1/embeddings",
            r#"{"model":"bge-large-en","input":"a"}"#.to_string(),
            "onprem-fra",
        ),
        (
            "/v1/chat/completions",
            chat_body("llama-3.1-70b"),
            "onprem-fra",
        ),
        (
            "/v1/chat/completions",
            chat_body("DeepSeek-Reasoner"),
            "gcp-europe-west4",
        ),
    ] {
        let reply = post(&mut connection, path, &[], &body);
        assert_eq!(reply.status, 200, "{body}: {}", reply.body);
        assert_eq!(reply.cloud(), Some(cloud), "{body}");
        assert!(
            reply
                .header("x-celroute-decision")
                .is_some_and(|d| d.contains(cloud)),
            "{:?}",
            reply.header("x-celroute-decision")
        );
    }
    // A routing header the client sent never routes.
    let reply = post(
        &mut connection,
        "/v1/chat/completions",
        &[("x-celroute-cluster", "aws-us-east-1")],
        &chat_body("o3-mini"),
    );
    assert_eq!(reply.cloud(), Some("gcp-europe-west4"));
    // A request without a body is decided at once.
    let reply = connection.send("GET", "/v1/models", &[], b"").unwrap();
    assert_eq!((reply.status, reply.cloud()), (200, Some("onprem-fra")));

    // HTTP/2 (cleartext, prior knowledge): each model on its own stream.
    let url = format!("http://{}/v1/chat/completions", s.envoy.listener);
    let h2 = |body: &str, urls: &[&str]| -> String {
        let output = std::process::Command::new("curl")
            .args(["-s", "-i", "--http2-prior-knowledge"])
            .args(["-H", "content-type: application/json", "-d", body])
            .args(urls)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let text = h2(&chat_body("o3-mini"), &[&url]) + "\n" + &h2(&chat_body("bge-m3"), &[&url]);
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("x-served-by: "))
        .map(str::trim)
        .collect();
    assert_eq!(served, ["gcp-europe-west4", "onprem-fra"], "{text}");
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert_no_panic(&s);
}

/// Sends a request whose headers announce `length` bytes of body, then
/// writes `send` bytes of it (from another thread, as a client that keeps
/// uploading would) and returns the status and body of the reply.
fn upload(address: SocketAddr, content_type: &str, length: usize, send: usize) -> (u16, String) {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n\r\n{{\"model\":\"o3-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\""
    );
    let uploader = std::thread::spawn(move || {
        let _ = writer.write_all(head.as_bytes());
        let chunk = vec![b'a'; 64 * 1024];
        let mut sent = head.len();
        while sent < send {
            let n = chunk.len().min(send - sent);
            if writer.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n;
        }
        sent
    });
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    let _ = reader.read_line(&mut status_line);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if line.starts_with('{') {
            body = line.clone();
            break;
        }
        line.clear();
    }
    drop(reader);
    let _ = uploader.join();
    (status, body)
}

fn error_code(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn bodies_the_policy_cannot_read_get_their_documented_status() {
    let s = stack();
    let at = s.envoy.listener;
    let json = "application/json";

    // Over options.max_body_bytes (1,000,000): 413, answered by celroute
    // once 1,100,000 of the announced 1,500,000 bytes have come.
    let (status, body) = upload(at, json, 1_500_000, 1_100_000);
    assert_eq!(
        (status, error_code(&body).as_str()),
        (413, "request_too_large"),
        "{body}"
    );
    // A 100 MB upload is refused once the limit is passed, not read to its
    // end. (Envoy closes the connection under the upload, so the reply's
    // body may be lost to the reset; its status is read first.)
    let started = std::time::Instant::now();
    let (status, body) = upload(at, json, 100_000_000, 100_000_000);
    assert_eq!(status, 413, "{body}");
    assert!(
        body.is_empty() || error_code(&body) == "request_too_large",
        "{body}"
    );
    println!("100 MB upload refused in {:?}", started.elapsed());

    let mut connection = Connection::open(at).unwrap();
    let cases = [
        (
            json,
            r#"{"model": "o3-mini", "messages": [{"role""#,
            400,
            "invalid_json",
        ),
        (json, "{model: o3-mini}", 400, "invalid_json"),
        (json, r#"["o3-mini"]"#, 400, "invalid_json"),
        (json, r#"{"model": 3}"#, 400, "invalid_request_body"),
        ("text/plain", "model=o3-mini", 415, "unsupported_media_type"),
        (
            "application/x-www-form-urlencoded",
            "model=o3-mini",
            415,
            "unsupported_media_type",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let mut connection = Connection::open(at).unwrap();
        let reply = post(
            &mut connection,
            "/v1/chat/completions",
            &[("content-type", content_type)],
            body,
        );
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["code"], code, "{}", reply.body);
        assert_eq!(error["rule"], "request-body");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(reply.cloud(), None, "a refused request reaches no cloud");
    }

    // A body cut off by the client closing mid-upload: no reply, no harm.
    let mut cut = TcpStream::connect(at).unwrap();
    cut.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":")
        .unwrap();
    drop(cut);

    // Envoy and the filter carry on.
    let reply = post(
        &mut connection,
        "/v1/chat/completions",
        &[],
        &chat_body("o3-mini"),
    );
    assert_eq!(
        (reply.status, reply.cloud()),
        (200, Some("gcp-europe-west4"))
    );
    assert!(
        s.envoy
            .wait_stat("wasmcustom.celroute.request_body.refused", 8)
            .unwrap()
            >= 8
    );
    assert_no_panic(&s);
}

fn assert_no_panic(s: &Stack) {
    let log = s.envoy.log_text();
    assert!(!log.contains("panicked"), "the filter panicked:\n{log}");
}

/// The events of a server-sent stream: each `data:` line's payload.
fn events(body: &str) -> Vec<&str> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect()
}

/// `(prompt, completion)` tokens in a reply: its `usage`, or the last event's.
fn reported_usage(reply: &Reply) -> Option<(u64, u64)> {
    let usage = |v: &serde_json::Value| {
        Some((
            v["usage"]["prompt_tokens"].as_u64()?,
            v["usage"]["completion_tokens"].as_u64()?,
        ))
    };
    if reply.header("content-type") == Some("text/event-stream") {
        events(&reply.body)
            .iter()
            .rev()
            .filter_map(|e| serde_json::from_str(e).ok())
            .find_map(|v: serde_json::Value| usage(&v))
    } else {
        usage(&reply.json())
    }
}

#[test]
fn streams_pass_through_and_token_and_cost_stats_match_the_clouds() {
    let s = stack();
    let policy = read_policy("model-routing.yaml").unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&policy).unwrap();
    let price = |cluster: &str| {
        doc["clusters"][cluster]["price_per_1k_tokens"]
            .as_f64()
            .unwrap()
    };
    let mut connection = Connection::open(s.envoy.listener).unwrap();

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut requests = 0;
    for i in 0..40u64 {
        let model = ["o3-mini", "llama-3.1-70b", "qwen-72b", "o1"][i as usize % 4];
        let words = "lorem ipsum dolor sit amet ".repeat(1 + i as usize % 7);
        let mut body = serde_json::json!({
            "model": model,
            "max_tokens": 1 + i % 9,
            "messages": [{"role": "user", "content": words}],
        });
        let streamed = i % 2 == 1;
        if streamed {
            body["stream"] = true.into();
            // One stream in four does not ask for usage: nothing to count.
            body["stream_options"] = serde_json::json!({"include_usage": i % 4 == 1});
        }
        let tenant = if i % 3 == 0 { "acme" } else { "globex" };
        let reply = post(
            &mut connection,
            "/v1/chat/completions",
            &[("x-tenant", tenant)],
            &body.to_string(),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        requests += 1;
        let cloud = reply.cloud().unwrap().to_string();
        if streamed {
            // The stream arrives whole: every word, then [DONE].
            let events = events(&reply.body);
            assert_eq!(events.last(), Some(&"[DONE]"), "{}", reply.body);
            let text: String = events
                .iter()
                .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
                .filter_map(|v| {
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(String::from)
                })
                .collect();
            assert!(text.starts_with("Hello"), "{text}");
            assert_eq!(
                text.split_whitespace().count() as u64,
                1 + i % 9,
                "{text}: {}",
                reply.body
            );
        }
        let Some((prompt, completion)) = reported_usage(&reply) else {
            assert!(streamed && i % 4 == 3, "usage missing: {}", reply.body);
            continue;
        };
        let cost = ((prompt + completion) as f64 * price(&cloud) / 1000.0 * 1e6).round() as u64;
        for (scope, name) in [("cluster", cloud.clone()), ("key", tenant.to_string())] {
            for (what, n) in [
                ("prompt_tokens", prompt),
                ("completion_tokens", completion),
                ("cost_micros", cost),
            ] {
                *expected
                    .entry(format!("{what}.{scope}.{name}"))
                    .or_default() += n;
            }
        }
    }
    assert_eq!(requests, 40);

    // What the clouds reported, in total, is what Envoy counted.
    let reported = |f: fn(&celroute_tests::clouds::Control) -> u64| -> u64 {
        s.clouds.values().map(|c| f(&c.control)).sum()
    };
    let prompt_total = reported(|c| c.prompt_tokens.load(Ordering::SeqCst));
    let completion_total = reported(|c| c.completion_tokens.load(Ordering::SeqCst));
    let stat = |name: &str| format!("wasmcustom.celroute.usage.{name}");
    let sum_of = |prefix: &str| -> u64 {
        s.envoy
            .stats(&stat(prefix))
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with(&stat(prefix)))
            .map(|(_, v)| v)
            .sum()
    };
    // Counters reach Envoy every 100 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sum_of("completion_tokens.cluster.") < completion_total
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sum_of("prompt_tokens.cluster."), prompt_total);
    assert_eq!(sum_of("completion_tokens.cluster."), completion_total);
    assert_eq!(sum_of("prompt_tokens.key."), prompt_total);
    for (name, value) in &expected {
        assert_eq!(s.envoy.stat(&stat(name)).unwrap(), *value, "{name}");
    }
    println!(
        "{requests} requests: {prompt_total} prompt and {completion_total} completion tokens, {} stats checked",
        expected.len()
    );
    // Egress: bytes out of each cloud, priced per GB (on premises is free).
    assert!(sum_of("bytes_out.cluster.") > 0);
    assert!(
        s.envoy
            .stat(&stat("egress_cost_micros.cluster.onprem-fra"))
            .unwrap()
            == 0
    );
    assert_no_panic(&s);
}

#[test]
fn the_official_openai_python_sdk_works_through_celroute() {
    let s = stack();
    let python = repo_root().join(".venv/bin/python");
    let script = repo_root().join("tests/python/openai_sdk.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(format!("http://{}/v1", s.envoy.listener))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (make setup installs the openai package)",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    println!("{seen:#}");

    // The model in the body routed: o3-mini is a reasoning model.
    assert_eq!(seen["chat"]["served_by"], "gcp-europe-west4");
    assert_eq!(seen["chat"]["text"], "Hello from gcp-europe-west4.");
    assert_eq!(seen["chat"]["usage"], serde_json::json!([5, 3]));
    // The stream reassembled, with its usage.
    assert_eq!(
        seen["stream"]["text"],
        "Hello from onprem-fra. word3 word4 word5"
    );
    assert_eq!(seen["stream"]["usage"], serde_json::json!([5, 6]));
    // Embeddings (base64, as the SDK asks) on premises.
    assert_eq!(seen["embeddings"]["served_by"], "onprem-fra");
    assert_eq!(seen["embeddings"]["count"], 2);
    assert_eq!(seen["embeddings"]["dimensions"], 8);
    assert_eq!(
        seen["embeddings"]["first"],
        serde_json::json!([0.0, 0.015625])
    );
    assert!(seen["models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "celroute-sim"));
    // A denial raises the SDK's exception with celroute's message and rule.
    let denied = &seen["denied"];
    assert_eq!(denied["exception"], "NotFoundError");
    assert_eq!(denied["status"], 404);
    assert_eq!(denied["code"], "policy_denied");
    assert_eq!(denied["rule"], "retired-models");
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("this model is retired: use gpt-4o-mini"),
        "{denied}"
    );
    // Budgets: a trial tenant's tokens run out (429, the SDK's
    // RateLimitError), and a tenant over its cloud budget runs on premises.
    let budget = &seen["budget"];
    assert_eq!(budget["status"], 429, "{seen}");
    assert_eq!(budget["rule"], "trial-token-budget");
    assert!(budget["message"]
        .as_str()
        .unwrap()
        .contains("daily token budget is spent"));
    assert_eq!(
        seen["over_cloud_budget"],
        serde_json::json!(["gcp-europe-west4", "onprem-fra"])
    );
    // The SDK's requests were counted for its tenant.
    let tokens = s
        .envoy
        .wait_stat("wasmcustom.celroute.usage.completion_tokens.key.sdk", 9)
        .unwrap();
    assert_eq!(tokens, 9, "3 for the chat, 6 for the stream");
    assert_no_panic(&s);
}
