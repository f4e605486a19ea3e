//! The docker-compose demo (`deploy/compose/`): bring it up, run its
//! scenarios under load, print per-cloud shares, and (with `check`) assert
//! what each scenario must show.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::http::Connection;
use crate::repo_root;

/// The compose project's name: its containers are `celroute-<service>-1`.
pub const PROJECT: &str = "celroute";
/// Host ports the compose file publishes on 127.0.0.1.
pub const ENTRY: u16 = 10080;
pub const REPLICAS: [(&str, u16, u16); 2] =
    [("celroute-1", 10081, 9911), ("celroute-2", 10082, 9912)];
pub const PROMETHEUS: u16 = 9090;
pub const FEED: u16 = 18105;
/// Compose service -> (cluster name, control port).
pub const CLOUDS: [(&str, &str, u16); 4] = [
    ("aws", "aws-us-east-1", 18101),
    ("gcp", "gcp-europe-west4", 18102),
    ("azure", "azure-westeurope", 18103),
    ("onprem", "onprem-fra", 18104),
];
/// The policy the demo starts with.
pub const POLICY: &str = "multi-cloud.yaml";

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `docker compose` (the plugin) where it exists, else `docker-compose`.
pub struct Compose {
    program: Vec<String>,
    dir: PathBuf,
}

impl Compose {
    /// The compose tool, once a Docker engine answers; the error says why not.
    pub fn find() -> Result<Compose> {
        let engine = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .context("running `docker info` (is Docker installed?)")?;
        if !engine.status.success() {
            bail!(
                "no Docker engine answers: {}",
                String::from_utf8_lossy(&engine.stderr).trim()
            );
        }
        let plugin = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let program = if plugin {
            vec!["docker".into(), "compose".into()]
        } else {
            vec!["docker-compose".into()]
        };
        Ok(Compose {
            program,
            dir: repo_root().join("deploy/compose"),
        })
    }

    /// The directory mounted into the replicas: the module and the policy.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Runs one compose command; its output, or an error with it.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.program[0]);
        command
            .args(&self.program[1..])
            .args(["-p", PROJECT, "-f"])
            .arg(self.dir.join("docker-compose.yaml"))
            .args(args);
        let output = command
            .output()
            .with_context(|| format!("running {} {}", self.program.join(" "), args.join(" ")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!(
                "`{} {}` failed:\n{text}",
                self.program.join(" "),
                args.join(" ")
            );
        }
        Ok(text)
    }

    /// Puts the module and the first policy where the replicas mount them.
    pub fn prepare(&self, wasm: &Path) -> Result<()> {
        let run = self.run_dir();
        let policy_dir = run.join("policy");
        std::fs::create_dir_all(&policy_dir)
            .with_context(|| format!("creating {}", policy_dir.display()))?;
        std::fs::copy(wasm, run.join("celroute.wasm"))
            .with_context(|| format!("copying {} (make wasm)", wasm.display()))?;
        self.publish(wasm, &repo_root().join("policies").join(POLICY))
            .map(|_| ())
    }

    /// `policy-host publish POLICY --to deploy/compose/run/policy --code
    /// /etc/celroute/celroute.wasm`: validated and tested in the real filter,
    /// then renamed into the directory both replicas watch. Returns the
    /// policy's version.
    pub fn publish(&self, wasm: &Path, policy: &Path) -> Result<String> {
        let module = policy_host::vm::FilterModule::load(wasm)?;
        let options = policy_host::publish::PublishOptions {
            to: self.run_dir().join("policy"),
            name: "celroute".into(),
            code: PathBuf::from("/etc/celroute/celroute.wasm"),
            run_tests: true,
        };
        let published = policy_host::publish::publish(&module, policy, &options)
            .map_err(|e| anyhow::anyhow!("publishing {}: {e}", policy.display()))?;
        Ok(published.version)
    }

    /// `up -d`, then waits for the first request routed through the entry
    /// port; returns the time from `up` to that answer.
    pub fn up(&self) -> Result<Duration> {
        let started = Instant::now();
        self.run(&["up", "-d"])?;
        let deadline = started + Duration::from_secs(90);
        loop {
            if let Ok(reply) = send(local(ENTRY), &EU_USER) {
                if reply.cloud.is_some() {
                    return Ok(started.elapsed());
                }
            }
            if Instant::now() > deadline {
                let logs = self.run(&["logs", "--tail", "30"]).unwrap_or_default();
                bail!(
                    "no request was routed through 127.0.0.1:{ENTRY} within 90 s of `up`:\n{logs}"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&self, service: &str) -> Result<()> {
        self.run(&["stop", "-t", "2", service]).map(|_| ())
    }

    pub fn start(&self, service: &str) -> Result<()> {
        self.run(&["start", service]).map(|_| ())
    }

    pub fn down(&self) -> Result<()> {
        self.run(&["down", "-v", "--remove-orphans", "-t", "2"])
            .map(|_| ())
    }
}

/// A request's user: EU users must stay in the EU.
pub const EU_USER: [(&str, &str); 2] = [("x-user-region", "eu"), ("x-tenant", "acme")];
pub const US_USER: [(&str, &str); 2] = [("x-user-region", "us"), ("x-tenant", "globex")];

/// One answer (status 0: no answer).
#[derive(Debug, Clone)]
pub struct Sample {
    pub eu: bool,
    pub status: u16,
    pub cloud: Option<String>,
    pub replica: Option<String>,
    pub decision: Option<String>,
    /// For an answer from no cloud: what came back instead (status, body,
    /// the replica's decision header), or why nothing did.
    pub failure: Option<String>,
}

const BODY: &[u8] = br#"{"model":"celroute-sim","messages":[{"role":"user","content":"route me somewhere cheap"}]}"#;

/// One chat completion on a new connection.
pub fn send(address: SocketAddr, headers: &[(&str, &str)]) -> Result<Sample> {
    let mut connection = Connection::open(address)?;
    send_on(&mut connection, headers)
}

fn send_on(connection: &mut Connection, headers: &[(&str, &str)]) -> Result<Sample> {
    let mut pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    pairs.push(("content-type", b"application/json"));
    let reply = connection.send("POST", "/v1/chat/completions", &pairs, BODY)?;
    let cloud = reply.cloud().map(str::to_string);
    let decision = reply.header("x-celroute-decision").map(str::to_string);
    Ok(Sample {
        eu: headers.contains(&("x-user-region", "eu")),
        status: reply.status,
        failure: cloud.is_none().then(|| {
            let body: String = reply.body.chars().take(300).collect();
            format!("{} {body:?} (decision: {decision:?})", reply.status)
        }),
        cloud,
        replica: reply.header("x-celroute-replica").map(str::to_string),
        decision,
    })
}

/// Load on the entry port: `per_group` keep-alive connections of EU users
/// and as many of US users, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Every answer taken so far.
    taken: Mutex<Vec<Sample>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(address: SocketAddr, per_group: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..per_group * 2)
            .map(|i| {
                let (stop, samples) = (stop.clone(), samples.clone());
                let headers = if i % 2 == 0 { EU_USER } else { US_USER };
                thread::spawn(move || {
                    let mut connection = None;
                    while !stop.load(Ordering::SeqCst) {
                        if connection.is_none() {
                            connection = Connection::open(address).ok();
                        }
                        let sample = match connection.as_mut().map(|c| send_on(c, &headers)) {
                            Some(Ok(sample)) => sample,
                            other => {
                                connection = None;
                                Sample {
                                    eu: i % 2 == 0,
                                    status: 0,
                                    cloud: None,
                                    replica: None,
                                    decision: None,
                                    failure: Some(match other {
                                        Some(Err(e)) => format!("no answer: {e:#}"),
                                        _ => "no connection".into(),
                                    }),
                                }
                            }
                        };
                        if let Ok(mut all) = samples.lock() {
                            all.push(sample);
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            taken: Mutex::new(Vec::new()),
            workers,
        }
    }

    /// The answers since the last call.
    pub fn take(&self) -> Vec<Sample> {
        let new = self
            .samples
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        if let Ok(mut taken) = self.taken.lock() {
            taken.extend(new.iter().cloned());
        }
        new
    }

    /// Stops the load; every answer it got.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for worker in self.workers {
            let _ = worker.join();
        }
        let rest = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        let mut all = self.taken.into_inner().unwrap_or_default();
        all.extend(rest);
        all
    }
}

/// What one phase of load showed.
#[derive(Debug, Default)]
pub struct Phase {
    pub requests: usize,
    /// Per user group ("EU", "US"): answers per cloud, or per failure.
    pub by_group: BTreeMap<&'static str, BTreeMap<String, usize>>,
    pub failed: usize,
    pub eu_outside_eu: usize,
    pub replicas: BTreeMap<String, usize>,
}

impl Phase {
    pub fn of(samples: &[Sample]) -> Phase {
        let mut phase = Phase {
            requests: samples.len(),
            ..Phase::default()
        };
        for s in samples {
            let group = if s.eu { "EU" } else { "US" };
            let key = match &s.cloud {
                Some(cloud) => cloud.clone(),
                None if s.status == 0 => "no answer".into(),
                None => format!("status {}", s.status),
            };
            *phase
                .by_group
                .entry(group)
                .or_default()
                .entry(key)
                .or_default() += 1;
            if s.cloud.is_none() {
                phase.failed += 1;
            }
            if s.eu && s.cloud.as_deref() == Some("aws-us-east-1") {
                phase.eu_outside_eu += 1;
            }
            if let Some(replica) = &s.replica {
                *phase.replicas.entry(replica.clone()).or_default() += 1;
            }
        }
        phase
    }

    /// The share of `group`'s requests that `cloud` served.
    pub fn share(&self, group: &str, cloud: &str) -> f64 {
        let Some(counts) = self.by_group.get(group) else {
            return 0.0;
        };
        let total: usize = counts.values().sum();
        if total == 0 {
            return 0.0;
        }
        *counts.get(cloud).unwrap_or(&0) as f64 / total as f64
    }

    /// `EU: gcp-europe-west4 51%, ...  US: ...`
    pub fn shares(&self) -> String {
        self.by_group
            .iter()
            .map(|(group, counts)| {
                let total: usize = counts.values().sum();
                let mut parts: Vec<(String, usize)> =
                    counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
                parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let parts: Vec<String> = parts
                    .iter()
                    .map(|(k, v)| format!("{k} {:.0}%", 100.0 * *v as f64 / total.max(1) as f64))
                    .collect();
                format!("{group}: {}", parts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("   ")
    }
}

/// Changes a simulated cloud through its `/sim/control` (published on the host).
pub fn control_cloud(service: &str, change: serde_json::Value) -> Result<()> {
    let (_, _, port) = CLOUDS
        .iter()
        .find(|(s, _, _)| *s == service)
        .with_context(|| format!("no cloud service '{service}'"))?;
    let mut connection = Connection::open(local(*port))?;
    let body = change.to_string();
    let reply = connection.send(
        "POST",
        celroute_sim::CONTROL_PATH,
        &[("content-type", b"application/json")],
        body.as_bytes(),
    )?;
    if reply.status != 200 {
        bail!(
            "{service}: /sim/control answered {}: {}",
            reply.status,
            reply.body
        );
    }
    Ok(())
}

/// Replaces the signals feed's document: `prices` per cluster.
pub fn set_feed_prices(prices: &[(&str, f64)]) -> Result<()> {
    let clusters: serde_json::Map<String, serde_json::Value> = prices
        .iter()
        .map(|(c, p)| (c.to_string(), serde_json::json!({"price_per_1k_tokens": p})))
        .collect();
    let body = serde_json::json!({"version": 1, "clusters": clusters}).to_string();
    let mut connection = Connection::open(local(FEED))?;
    let reply = connection.send(
        "PUT",
        "/v1/signals",
        &[("content-type", b"application/json")],
        body.as_bytes(),
    )?;
    if reply.status != 200 {
        bail!("the signals feed answered {}: {}", reply.status, reply.body);
    }
    Ok(())
}

/// The feed's prices when the demo starts (deploy/compose/signals.json).
pub const LIST_PRICES: [(&str, f64); 3] = [
    ("aws-us-east-1", 0.30),
    ("gcp-europe-west4", 0.45),
    ("azure-westeurope", 0.48),
];

/// One Prometheus instant query: the sum of its values.
pub fn prometheus_sum(query: &str) -> Result<f64> {
    let mut connection = Connection::open(local(PROMETHEUS))?;
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let reply = connection.send("GET", &path, &[], b"")?;
    if reply.status != 200 {
        bail!("Prometheus answered {}: {}", reply.status, reply.body);
    }
    let json = reply.json();
    let results = json["data"]["result"]
        .as_array()
        .with_context(|| format!("no result in {}", reply.body))?;
    Ok(results
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .sum())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The policy version in a decision header (`...; policy=<version>`).
pub fn policy_version(decision: &str) -> Option<&str> {
    decision
        .split(';')
        .find_map(|part| part.trim().strip_prefix("policy="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(eu: bool, cloud: Option<&str>, status: u16) -> Sample {
        Sample {
            eu,
            status,
            cloud: cloud.map(str::to_string),
            replica: Some("celroute-1".into()),
            decision: None,
            failure: None,
        }
    }

    #[test]
    fn phases_count_shares_failures_and_residency() {
        let phase = Phase::of(&[
            sample(true, Some("gcp-europe-west4"), 200),
            sample(true, Some("aws-us-east-1"), 200),
            sample(true, None, 0),
            sample(false, Some("aws-us-east-1"), 200),
            sample(false, None, 503),
        ]);
        assert_eq!(phase.requests, 5);
        assert_eq!(phase.failed, 2);
        assert_eq!(phase.eu_outside_eu, 1);
        assert!((phase.share("EU", "gcp-europe-west4") - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(phase.share("US", "aws-us-east-1"), 0.5);
        assert_eq!(
            phase.shares(),
            "EU: aws-us-east-1 33%, gcp-europe-west4 33%, no answer 33%   US: aws-us-east-1 50%, status 503 50%"
        );
        assert_eq!(phase.replicas["celroute-1"], 5);
    }

    #[test]
    fn versions_and_queries() {
        assert_eq!(
            policy_version("cluster=a; rule=b; policy=0123abcd"),
            Some("0123abcd")
        );
        assert_eq!(
            percent_encode("sum(x{a=\"b\"})"),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
    }
}
