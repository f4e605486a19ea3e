//! Hostile requests through real Envoy with celroute: oversized and
//! numerous headers, non-UTF-8 bytes, the routing header spoofed in any case,
//! repeated and empty tenant headers, huge and truncated bodies, a slow
//! client, pipelining. After each, a normal request is still routed as the
//! policy says, and no wasm VM has failed (Envoy's wasm stats).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use celroute_tests::http::{request, Connection};
use celroute_tests::Stack;

/// Sends raw bytes (in pieces, `pause` apart) and returns everything Envoy
/// answered until it closed the connection or went quiet for two seconds.
fn raw(address: SocketAddr, pieces: &[&[u8]], pause: Duration) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for piece in pieces {
        if stream.write_all(piece).is_err() {
            break; // Envoy may close on a request it refuses
        }
        std::thread::sleep(pause);
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn statuses(answer: &str) -> Vec<&str> {
    answer
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .filter_map(|l| l.split(' ').nth(1))
        .collect()
}

/// Which cloud served each response in `answer` (`x-served-by`).
fn served(answer: &str) -> Vec<&str> {
    answer
        .lines()
        .filter_map(|l| l.strip_prefix("x-served-by: "))
        .map(str::trim)
        .collect()
}

/// An EU user asking for latency: the policy routes to gcp-europe-west4.
const EU: &[(&str, &str)] = &[
    ("x-tenant", "acme"),
    ("x-user-region", "eu"),
    ("x-priority", "latency"),
];

fn still_routes(stack: &Stack, after: &str) {
    let reply = request(stack.envoy.listener, "GET", "/", EU).unwrap();
    assert_eq!(
        reply.cloud(),
        Some("gcp-europe-west4"),
        "after {after}: {} {}",
        reply.status,
        reply.body
    );
}

fn head(extra: &str, body_length: Option<usize>) -> Vec<u8> {
    let length = body_length
        .map(|n| format!("content-length: {n}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: celroute.test\r\nx-tenant: acme\r\nx-user-region: eu\r\nx-priority: latency\r\n{extra}{length}\r\n"
    )
    .into_bytes()
}

#[test]
fn hostile_requests_leave_the_filter_routing() {
    let stack = Stack::start(Ok).expect("clouds and Envoy start");
    let at = stack.envoy.listener;
    let quick = Duration::ZERO;

    // 60 KB in one header value: over Envoy's default header limit (60 KiB in all).
    let big = format!("x-big: {}\r\n", "a".repeat(60 * 1024));
    let answer = raw(at, &[&head(&big, Some(0))], quick);
    assert_eq!(statuses(&answer), ["431"], "{answer:.200}");
    still_routes(&stack, "a 60 KB header");

    // 300 headers: over Envoy's default of 100.
    let many: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(at, &[&head(&many, Some(0))], quick);
    assert_eq!(statuses(&answer), ["431"], "{answer:.200}");
    still_routes(&stack, "300 headers");

    // Non-UTF-8 bytes in a header the policy reads.
    let odd =
        b"GET / HTTP/1.1\r\nhost: x\r\nx-tenant: \xff\xfe\x80\r\nx-user-region: \xc3\x28\r\n\r\n"
            .to_vec();
    let _ = raw(at, &[&odd], quick);
    still_routes(&stack, "non-UTF-8 header bytes");

    // The routing header spoofed, in any case: a US user naming an EU
    // cluster, or an EU user naming a US one, never gets it.
    for name in [
        "x-celroute-cluster",
        "X-Celroute-Cluster",
        "X-CELROUTE-CLUSTER",
    ] {
        let spoof = format!("{name}: aws-us-east-1\r\n");
        let answer = raw(at, &[&head(&spoof, Some(0))], quick);
        assert_eq!(
            served(&answer),
            ["gcp-europe-west4"],
            "{name}: {answer:.300}"
        );
        let mut c = Connection::open(at).unwrap();
        let reply = c
            .send(
                "GET",
                "/",
                &[
                    ("x-tenant", b"acme"),
                    (name, b"gcp-europe-west4"),
                    (name, b"onprem-fra"),
                ],
                b"",
            )
            .unwrap();
        // The policy sends this tenant to the cheapest cloud, whatever it names.
        assert_eq!(
            reply.cloud(),
            Some("onprem-fra"),
            "{name} picked the cluster"
        );
    }
    still_routes(&stack, "spoofed routing headers");

    // Repeated and empty tenant headers: present, so not denied.
    let answer = raw(
        at,
        &[&head("x-tenant: \r\nx-tenant: other\r\n", Some(0))],
        quick,
    );
    assert_eq!(statuses(&answer), ["200"], "{answer:.300}");
    let answer = raw(
        at,
        &[b"GET / HTTP/1.1\r\nhost: x\r\nx-tenant:\r\n\r\n"],
        quick,
    );
    assert_eq!(statuses(&answer), ["200"], "{answer:.300}");
    still_routes(&stack, "repeated and empty tenant headers");

    // A 2 MB body, streamed through.
    let body = vec![b'{'; 2 << 20];
    let answer = raw(at, &[&head("", Some(body.len())), &body], quick);
    assert_eq!(statuses(&answer).len(), 1, "{answer:.300}");
    still_routes(&stack, "a 2 MB body");

    // A body cut short: the client promises 1,000 bytes, sends 10, leaves.
    let _ = raw(at, &[&head("", Some(1000)), b"0123456789"], quick);
    still_routes(&stack, "a truncated body");

    // A slow client: the request dribbles in, a few bytes at a time.
    let request = head("", Some(0));
    let pieces: Vec<&[u8]> = request.chunks(16).collect();
    let answer = raw(at, &pieces, Duration::from_millis(20));
    assert_eq!(served(&answer), ["gcp-europe-west4"], "{answer:.300}");
    still_routes(&stack, "a slow client");

    // Pipelining: three requests in one write, each decided on its own.
    let mut three = head("", Some(0));
    three.extend(
        b"GET / HTTP/1.1\r\nhost: x\r\nx-tenant: acme\r\nx-user-region: us\r\nx-priority: latency\r\n\r\n",
    );
    three.extend(head("", Some(0)));
    let answer = raw(at, &[&three], quick);
    assert_eq!(
        served(&answer),
        ["gcp-europe-west4", "aws-us-east-1", "gcp-europe-west4"],
        "{answer:.600}"
    );
    still_routes(&stack, "pipelining");

    // No VM failed, and nothing panicked.
    let stats = stack.envoy.stats("wasm").unwrap();
    for stat in ["wasm.celroute.vm_reload", "wasm.celroute.vm_reload_failure"] {
        assert_eq!(stats.get(stat), Some(&0), "{stat}: {stats:?}");
    }
    assert!(!stack.envoy.log_text().contains("panicked"));
}
