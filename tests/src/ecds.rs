//! A live Envoy whose celroute policy is hot-reloaded through ECDS from a
//! watched directory (`envoy/envoy-ecds.yaml`), with policies published by
//! policy-host: what the hot-reload tests, the hostile-policy tests and the
//! reload benchmark share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use policy_host::publish::{publish, PublishOptions};
use policy_host::vm::FilterModule;

use crate::envoy::{wasm, Envoy};
use crate::http::{Connection, Reply};
use crate::Stack;

/// ECDS stats of the celroute filter (Envoy names them by the HCM's stat prefix).
pub const RELOADS: &str = "extension_config_discovery.http_filter.celroute.config_reload";
pub const FAILURES: &str = "extension_config_discovery.http_filter.celroute.config_fail";

/// A policy that sends every request to `cluster` (one of two), and reports
/// its decision in `x-celroute-decision`.
pub fn policy_to(cluster: &str) -> String {
    format!(
        "name: to-{cluster}\nclusters:\n  aws-us-east-1: {{}}\n  azure-westeurope: {{}}\nrules:\n  - {{name: to-{cluster}, prefer: [{cluster}]}}\noptions:\n  decision_header: x-celroute-decision\n"
    )
}

/// Simulated clouds and an Envoy on the ECDS config, watching `dir`.
pub struct Live {
    pub module: FilterModule,
    pub dir: tempfile::TempDir,
    policies: tempfile::TempDir,
    pub stack: Stack,
}

impl Live {
    /// Publishes `first`, then starts Envoy watching the directory.
    pub fn start(first: &str) -> Result<Live> {
        let module = FilterModule::load(&wasm()?)?;
        let dir = tempfile::tempdir()?;
        let policies = tempfile::tempdir()?;
        let path = write_policy(policies.path(), "first.yaml", first)?;
        publish(&module, &path, &publish_options(dir.path())?)
            .map_err(|e| anyhow!("first publish: {e}"))?;
        let stack = Stack::start_from("envoy-ecds.yaml", |c| c.with_ecds_dir(dir.path()))
            .context("Envoy with ECDS")?;
        Ok(Live {
            module,
            dir,
            policies,
            stack,
        })
    }

    pub fn envoy(&self) -> &Envoy {
        &self.stack.envoy
    }

    /// Publishes a policy as `policy-host publish` does (validated and tested first).
    pub fn publish(&self, name: &str, policy: &str) -> Result<()> {
        let path = write_policy(self.policies.path(), name, policy)?;
        publish(&self.module, &path, &publish_options(self.dir.path())?)
            .map_err(|e| anyhow!("publish {name}: {e}"))?;
        Ok(())
    }

    /// Waits until Envoy has counted one more ECDS event in `stat` than `before`.
    pub fn wait_for(&self, stat: &str, before: u64) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.envoy().stat(stat)? > before {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        bail!(
            "{stat} did not move past {before}:\n{}",
            self.envoy().log_text()
        )
    }
}

/// Writes a policy file into `dir`.
pub fn write_policy(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Publishing into `to` with its tests run, as the CLI does by default.
pub fn publish_options(to: &Path) -> Result<PublishOptions> {
    Ok(PublishOptions {
        to: to.to_path_buf(),
        name: "celroute".into(),
        code: wasm()?,
        run_tests: true,
    })
}

/// The cloud that served one GET on `connection`; an error for any other status.
pub fn cloud_of(connection: &mut Connection) -> Result<String> {
    let reply = connection.send("GET", "/", &[], b"")?;
    if reply.status != 200 {
        bail!("status {}: {}", reply.status, reply.body);
    }
    reply
        .cloud()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no cloud answered"))
}

/// Keep-alive clients sending `GET /` in a loop until stopped, each reply
/// judged by a check: the load under which reloads must fail no request.
pub struct Load {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub total: u64,
    /// One line per failed request: a status other than the check wanted, or an I/O error.
    pub failures: Vec<String>,
}

impl Load {
    /// Starts `connections` clients against `listener`; `check` says what is
    /// wrong with a reply, if anything.
    pub fn start(
        listener: SocketAddr,
        connections: usize,
        check: impl Fn(&Reply) -> Option<String> + Send + Sync + 'static,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let check = Arc::new(check);
        let clients = (0..connections)
            .map(|_| {
                let (stop, total, failures, check) =
                    (stop.clone(), total.clone(), failures.clone(), check.clone());
                std::thread::spawn(move || {
                    let mut connection = None;
                    while !stop.load(Ordering::Relaxed) {
                        let failure = match connection
                            .take()
                            .map_or_else(|| Connection::open(listener), Ok)
                        {
                            Ok(mut open) => match open.send("GET", "/", &[], b"") {
                                Ok(reply) => {
                                    connection = Some(open);
                                    check(&reply)
                                }
                                Err(e) => Some(format!("{e:#}")),
                            },
                            Err(e) => Some(format!("{e:#}")),
                        };
                        if let Some(failure) = failure {
                            if let Ok(mut failures) = failures.lock() {
                                failures.push(failure);
                            }
                        }
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            total,
            failures,
            clients,
        }
    }

    /// Stops the clients and reports.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            let _ = client.join();
        }
        LoadReport {
            total: self.total.load(Ordering::Relaxed),
            failures: self.failures.lock().map(|f| f.clone()).unwrap_or_default(),
        }
    }
}

impl LoadReport {
    /// An error unless every request passed and there were at least `minimum`.
    pub fn check(&self, minimum: u64) -> Result<()> {
        if !self.failures.is_empty() {
            bail!(
                "{} failed of {}: {:?}",
                self.failures.len(),
                self.total,
                &self.failures[..self.failures.len().min(10)]
            );
        }
        if self.total < minimum {
            bail!("the load was too light to mean anything: {}", self.total);
        }
        Ok(())
    }
}
