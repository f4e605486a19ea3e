//! Bounded load on loopback: a few keep-alive connections sending requests
//! for a fixed time, each reply recorded with when it arrived and which
//! cloud answered.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use crate::clouds::now_ms;
use crate::http::Connection;

/// One request's result: status 0 when no reply came (connection error).
#[derive(Debug, Clone)]
pub struct Sample {
    pub at_ms: u64,
    pub status: u16,
    pub cloud: Option<String>,
    /// For a reply no cloud sent: its body and decision header.
    pub detail: Option<String>,
}

/// Sends `GET path` with `headers` on `connections` connections for
/// `duration`, pausing `pause` between requests on each.
pub fn run(
    address: SocketAddr,
    connections: usize,
    duration: Duration,
    pause: Duration,
    headers: &[(&str, &str)],
) -> Vec<Sample> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let headers = headers.clone();
            thread::spawn(move || worker(address, deadline, pause, &headers))
        })
        .collect();
    let mut samples: Vec<Sample> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap_or_default())
        .collect();
    samples.sort_by_key(|s| s.at_ms);
    samples
}

fn worker(
    address: SocketAddr,
    deadline: Instant,
    pause: Duration,
    headers: &[(String, String)],
) -> Vec<Sample> {
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let mut samples = Vec::new();
    let mut connection = None;
    while Instant::now() < deadline {
        if connection.is_none() {
            connection = Connection::open(address).ok();
        }
        let reply = connection
            .as_mut()
            .map(|c| c.send("GET", "/v1/models", &pairs, b""));
        let sample = match reply {
            Some(Ok(reply)) => Sample {
                at_ms: now_ms(),
                status: reply.status,
                cloud: reply.cloud().map(str::to_string),
                detail: reply.cloud().is_none().then(|| {
                    format!(
                        "{} {}",
                        reply.header("x-celroute-decision").unwrap_or_default(),
                        reply.body.chars().take(400).collect::<String>()
                    )
                }),
            },
            _ => {
                connection = None;
                Sample {
                    at_ms: now_ms(),
                    status: 0,
                    cloud: None,
                    detail: None,
                }
            }
        };
        samples.push(sample);
        thread::sleep(pause);
    }
    samples
}

/// Share of `samples` answered by `cloud` (0 when there are none).
pub fn share(samples: &[Sample], cloud: &str) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let n = samples
        .iter()
        .filter(|s| s.cloud.as_deref() == Some(cloud))
        .count();
    n as f64 / samples.len() as f64
}

/// The samples that arrived in `[from, to)` (ms since the epoch).
pub fn between(samples: &[Sample], from: u64, to: u64) -> Vec<Sample> {
    samples
        .iter()
        .filter(|s| s.at_ms >= from && s.at_ms < to)
        .cloned()
        .collect()
}
