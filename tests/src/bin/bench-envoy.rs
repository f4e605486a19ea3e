//! Throughput and latency of Envoy with celroute, side by side with Envoy
//! alone, the least a proxy-wasm routing filter does, Envoy's Lua filter
//! making the same decision, and the same decision made outside Envoy by an
//! external processor (`celroute-ext-proc`, ext_proc over gRPC).
//!
//! In one run: starts an upstream and every configuration on loopback, checks
//! that the Lua filter, the external processor and celroute decide every
//! request of the mix alike,
//! then drives the same bounded `wrk` load against each configuration in
//! turn, on a direct-response route (the filter's cost alone) and a proxied
//! one, for several rounds. Prints one table of medians (req/s, p50, p99,
//! Envoy's peak RSS and the ratios to Envoy alone and to the header-only
//! floor) and writes it as Markdown and JSON.
//!
//! `bench-envoy [--duration SECS] [--rounds N] [--connections N] [--threads N] [--out DIR] [--only NAME-PART]...`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use celroute_tests::bench;
use celroute_tests::bench_envoy::{
    envoy_config, probe, same_decisions, upstream_config, ExtProcess, Filter, Variant,
};
use celroute_tests::envoy::Envoy;
use celroute_tests::repo_root;
use serde::Serialize;

/// CPUs: Envoy under test on one, the load and the upstream on another, so
/// that they do not take turns on the same core.
const ENVOY_CPU: &str = "1";
const LOAD_CPU: &str = "0";
/// The external processor, built by `make bench-envoy` (release); the
/// environment variable `CELROUTE_EXT_PROC` names another build.
fn ext_proc_binary() -> PathBuf {
    std::env::var_os("CELROUTE_EXT_PROC")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/celroute-ext-proc"))
}

/// Distinct requests in the load mix.
const MIX: usize = 64;

struct Options {
    duration: u64,
    rounds: usize,
    connections: usize,
    threads: usize,
    out: PathBuf,
    /// Only the configurations whose name contains one of these (plus Envoy alone and the floor).
    only: Vec<String>,
    /// Starts of each configuration, whose median start-up is reported.
    startup_runs: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        duration: 2,
        rounds: 9,
        connections: 50,
        threads: 1,
        out: repo_root().join("target/bench-envoy"),
        only: Vec::new(),
        startup_runs: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--duration" => o.duration = value()?.parse().context("--duration: seconds")?,
            "--rounds" => o.rounds = value()?.parse().context("--rounds: a count")?,
            "--connections" => o.connections = value()?.parse().context("--connections")?,
            "--threads" => o.threads = value()?.parse().context("--threads")?,
            "--out" => o.out = PathBuf::from(value()?),
            "--only" => o.only.push(value()?),
            "--startup-runs" => {
                o.startup_runs = value()?.parse().context("--startup-runs: a count")?
            }
            "-h" | "--help" => {
                println!("bench-envoy [--duration SECS=2] [--rounds N=9] [--connections N=50] [--threads N=1] [--out DIR=target/bench-envoy] [--only NAME-PART]... [--startup-runs N=5]");
                std::process::exit(0);
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }
    if o.duration == 0 || o.duration > 120 || o.rounds == 0 || o.rounds > 20 {
        bail!("--duration must be 1..=120 seconds and --rounds 1..=20");
    }
    if !(1..=20).contains(&o.startup_runs) {
        bail!("--startup-runs must be 1..=20");
    }
    Ok(o)
}

struct Subject {
    name: String,
    filter: Filter,
}

fn subjects() -> Vec<Subject> {
    let mut out = vec![
        Subject {
            name: "Envoy, no filter".into(),
            filter: Filter::None,
        },
        Subject {
            name: "header-only proxy-wasm filter (floor)".into(),
            filter: Filter::HeaderOnly,
        },
    ];
    for rules in [20, 100] {
        out.push(Subject {
            name: format!("Lua filter, same decision, {rules} rules"),
            filter: Filter::Lua { rules },
        });
    }
    out.push(Subject {
        name: "ext_proc processor (Rust, gRPC), same decision, 20 rules".into(),
        // The port is the processor's, known once it runs.
        filter: Filter::ExtProc { rules: 20, port: 0 },
    });
    for rules in [5, 20, 100] {
        out.push(Subject {
            name: format!("celroute, {rules} rules"),
            filter: Filter::Celroute {
                rules,
                cache: true,
                variant: Variant::Plain,
            },
        });
    }
    out.push(Subject {
        name: "celroute, 20 rules, decision cache off".into(),
        filter: Filter::Celroute {
            rules: 20,
            cache: false,
            variant: Variant::Plain,
        },
    });
    out.push(Subject {
        name: "celroute, 20 rules, live state".into(),
        filter: Filter::Celroute {
            rules: 20,
            cache: true,
            variant: Variant::Live,
        },
    });
    out.push(Subject {
        name: "celroute, 20 rules, model from the body".into(),
        filter: Filter::Celroute {
            rules: 20,
            cache: true,
            variant: Variant::BodyModel,
        },
    });
    out.push(Subject {
        name: "celroute, 20 rules, streaming with usage counting".into(),
        filter: Filter::Celroute {
            rules: 20,
            cache: true,
            variant: Variant::Usage,
        },
    });
    out.push(Subject {
        name: "celroute, 20 rules, decision log".into(),
        filter: Filter::Celroute {
            rules: 20,
            cache: true,
            variant: Variant::DecisionLog,
        },
    });
    out
}

/// The wrk script: cycles through the request mix on `path` (a POST of
/// `body` as JSON when there is one), prints one JSON line.
fn wrk_script(path: &str, body: Option<&str>) -> String {
    let mut mix = String::new();
    for mut headers in bench::routed_requests(MIX) {
        if body.is_some() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        let fields: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("[\"{k}\"] = \"{v}\""))
            .collect();
        mix.push_str(&format!("  {{{}}},\n", fields.join(", ")));
    }
    format!(
        r#"local mix = {{
{mix}}}
local requests = {{}}
local n = 0
init = function(args)
  for i, headers in ipairs(mix) do
    requests[i] = wrk.format("{method}", "{path}", headers, {lua_body})
  end
end
request = function()
  n = n % #requests + 1
  return requests[n]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCH {{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#,
        method = if body.is_some() { "POST" } else { "GET" },
        lua_body = body.map_or("nil".to_string(), |b| format!("[[{b}]]")),
    )
}

#[derive(serde::Deserialize)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    connect_errors: u64,
    read_errors: u64,
    write_errors: u64,
    status_errors: u64,
    timeouts: u64,
    p50_us: u64,
    p99_us: u64,
    /// Envoy's CPU time over the run divided by the requests served.
    #[serde(default)]
    cpu_us_per_request: f64,
    /// The external processor's, likewise (0 without one).
    #[serde(default)]
    processor_cpu_us_per_request: f64,
}

fn wrk(options: &Options, script: &Path, address: std::net::SocketAddr) -> Result<WrkResult> {
    let output = Command::new("taskset")
        .args(["-c", LOAD_CPU, "wrk"])
        .args(["-t", &options.threads.to_string()])
        .args(["-c", &options.connections.to_string()])
        .args(["-d", &format!("{}s", options.duration)])
        .args(["--timeout", "5s", "-s"])
        .arg(script)
        .arg(format!("http://{address}"))
        .output()
        .context("running wrk (install it: apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| {
            format!(
                "wrk printed no result ({}):\n{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let result: WrkResult = serde_json::from_str(line).context("reading wrk's result")?;
    let errors = result.connect_errors
        + result.read_errors
        + result.write_errors
        + result.status_errors
        + result.timeouts;
    if errors > 0 || result.requests == 0 {
        bail!(
            "{errors} failed requests out of {} against {address}: {line}",
            result.requests
        );
    }
    Ok(result)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// CPU time a process has used so far (all its threads), from the scheduler.
fn cpu_time(pid: u32) -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

/// Pins every thread of a process to `cpus`.
fn pin(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    if !status.success() {
        bail!("taskset could not pin process {pid} to CPU {cpus}");
    }
    Ok(())
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[derive(Serialize)]
struct Row {
    configuration: String,
    route: String,
    requests_per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// Envoy's CPU per request plus the external processor's, if any.
    cpu_us_per_request: f64,
    /// The external processor's part of it.
    processor_cpu_us_per_request: Option<f64>,
    peak_rss_mib: Option<f64>,
    ratio_to_envoy: f64,
    ratio_to_floor: f64,
    /// Every round's requests per second, in order.
    rounds: Vec<f64>,
}

#[derive(Serialize)]
struct Startup {
    configuration: String,
    /// Process start to the first routed response on the proxied route.
    first_routed_response_ms: f64,
}

#[derive(Serialize)]
struct Report {
    date: String,
    cores: usize,
    cpu: String,
    envoy: String,
    load: String,
    rows: Vec<Row>,
    startup: Vec<Startup>,
    startup_runs: usize,
    celroute_wasm_bytes: u64,
    decision_cache: BTreeMap<String, (u64, u64)>,
}

struct Running {
    subject: Subject,
    envoy: Envoy,
    started: Duration,
    /// The external processor of an ext_proc configuration (stopped after Envoy).
    processor: Option<ExtProcess>,
}

fn main() -> Result<()> {
    let options = options()?;
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: `make bench-envoy` installs it (apt-get install wrk)");
    }
    let wasm_dir = repo_root().join("target/wasm32-wasip1/release");
    for file in ["celroute.wasm", "header_only.wasm"] {
        if !wasm_dir.join(file).is_file() {
            bail!(
                "{} is missing: `make bench-envoy` builds it",
                wasm_dir.join(file).display()
            );
        }
    }
    std::fs::create_dir_all(&options.out)?;
    let upstream = Envoy::start(&upstream_config()?).context("starting the upstream Envoy")?;
    pin(upstream.pid(), LOAD_CPU)?;
    println!("upstream Envoy on {}", upstream.listener);

    let mut running = Vec::new();
    for subject in subjects().into_iter().enumerate().filter_map(|(i, s)| {
        let wanted = i < 2
            || options.only.is_empty()
            || options.only.iter().any(|o| s.name.contains(o.as_str()));
        wanted.then_some(s)
    }) {
        let mut subject = subject;
        // An external processor runs on Envoy's CPU: both share its budget.
        let processor = match subject.filter {
            Filter::ExtProc { rules, .. } => {
                let binary = ext_proc_binary();
                if !binary.is_file() {
                    bail!(
                        "{} is missing: `make bench-envoy` builds it",
                        binary.display()
                    );
                }
                let process = ExtProcess::start(&binary, &bench::policy_yaml(rules, None))?;
                pin(process.pid(), ENVOY_CPU)?;
                subject.filter = Filter::ExtProc {
                    rules,
                    port: process.port,
                };
                Some(process)
            }
            _ => None,
        };
        let config = envoy_config(&subject.filter, upstream.listener.port(), &wasm_dir)?;
        // Start-up ends with the first response routed through the filter;
        // each configuration starts `startup_runs` times, and each start
        // replaces (stops) the one before: the last one stays.
        let mut starts = Vec::new();
        let mut last = None;
        for _ in 0..options.startup_runs {
            drop(last.take());
            let begin = Instant::now();
            let envoy =
                Envoy::start(&config).with_context(|| format!("starting '{}'", subject.name))?;
            let (status, _, _) = probe(&envoy, "/v1/proxied/chat", &bench::routed_requests(1)[0])?;
            starts.push(begin.elapsed());
            if status != 200 {
                bail!("'{}': first proxied request got {status}", subject.name);
            }
            last = Some(envoy);
        }
        let Some(envoy) = last else {
            bail!("'{}' was not started", subject.name);
        };
        pin(envoy.pid(), ENVOY_CPU)?;
        starts.sort();
        let started = starts[starts.len() / 2];
        println!(
            "{:<45} ready, first routed response after {:>5} ms (median of {}, {}-{} ms)",
            subject.name,
            started.as_millis(),
            starts.len(),
            starts[0].as_millis(),
            starts[starts.len() - 1].as_millis()
        );
        running.push(Running {
            subject,
            envoy,
            started,
            processor,
        });
    }

    check_same_decisions(&running)?;

    let scripts = options.out.join("scripts");
    std::fs::create_dir_all(&scripts)?;
    let routes = [
        ("direct response", "/v1/direct/chat", None),
        ("proxied", "/v1/proxied/chat", None),
        (
            "direct response, JSON body",
            "/v1/direct/chat",
            Some(bench::CHAT_BODY),
        ),
        (
            "proxied, streamed answer (SSE)",
            "/v1/proxied/stream",
            Some(bench::CHAT_BODY),
        ),
    ];
    let mut script_paths = Vec::new();
    for (i, (_, path, body)) in routes.iter().enumerate() {
        let file = scripts.join(format!("route-{i}.lua"));
        std::fs::write(&file, wrk_script(path, *body))?;
        script_paths.push(file);
    }

    // Rounds interleave the configurations so that drift in the machine's
    // load spreads over all of them alike.
    let mut results: BTreeMap<(usize, usize), Vec<WrkResult>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for (s, run) in running.iter().enumerate() {
            for (r, (route, _, _)) in routes.iter().enumerate() {
                let processor_cpu = || run.processor.as_ref().map(|p| cpu_time(p.pid()));
                let cpu_before = cpu_time(run.envoy.pid());
                let processor_before = processor_cpu();
                let mut result = wrk(&options, &script_paths[r], run.envoy.listener)
                    .with_context(|| format!("'{}', {route}", run.subject.name))?;
                let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / result.requests as f64;
                result.cpu_us_per_request = per_request(cpu_time(run.envoy.pid()) - cpu_before);
                if let (Some(after), Some(before)) = (processor_cpu(), processor_before) {
                    result.processor_cpu_us_per_request = per_request(after - before);
                }
                println!(
                    "round {round}/{}  {:<45} {:<16} {:>9.0} req/s  p50 {:>6} µs  p99 {:>6} µs  Envoy CPU {:>5.1} µs/req{}",
                    options.rounds,
                    run.subject.name,
                    route,
                    rps(&result),
                    result.p50_us,
                    result.p99_us,
                    result.cpu_us_per_request,
                    if run.processor.is_some() {
                        format!("  processor CPU {:>5.1} µs/req", result.processor_cpu_us_per_request)
                    } else {
                        String::new()
                    }
                );
                results.entry((s, r)).or_default().push(result);
            }
        }
    }

    let median_rps = |s: usize, r: usize| -> f64 {
        let mut v: Vec<f64> = results
            .get(&(s, r))
            .map(|v| v.iter().map(rps).collect())
            .unwrap_or_default();
        median(&mut v)
    };
    let envoy_index = 0;
    let floor_index = 1;
    let mut rows = Vec::new();
    for (r, (route, _, _)) in routes.iter().enumerate() {
        for (s, run) in running.iter().enumerate() {
            let all = results.get(&(s, r)).map(Vec::as_slice).unwrap_or_default();
            let rps_value = median_rps(s, r);
            rows.push(Row {
                configuration: run.subject.name.clone(),
                route: route.to_string(),
                requests_per_second: rps_value,
                p50_us: median(&mut all.iter().map(|x| x.p50_us as f64).collect::<Vec<_>>()),
                p99_us: median(&mut all.iter().map(|x| x.p99_us as f64).collect::<Vec<_>>()),
                cpu_us_per_request: median(
                    &mut all
                        .iter()
                        .map(|x| x.cpu_us_per_request + x.processor_cpu_us_per_request)
                        .collect::<Vec<_>>(),
                ),
                processor_cpu_us_per_request: run.processor.is_some().then(|| {
                    median(
                        &mut all
                            .iter()
                            .map(|x| x.processor_cpu_us_per_request)
                            .collect::<Vec<_>>(),
                    )
                }),
                peak_rss_mib: peak_rss_mib(run.envoy.pid()),
                ratio_to_envoy: rps_value / median_rps(envoy_index, r),
                ratio_to_floor: rps_value / median_rps(floor_index, r),
                rounds: all.iter().map(rps).collect(),
            });
        }
    }

    let mut decision_cache = BTreeMap::new();
    for run in &running {
        if let Filter::Celroute { .. } = run.subject.filter {
            let stats = run.envoy.stats("decision_cache")?;
            let get = |suffix: &str| {
                stats
                    .iter()
                    .find(|(k, _)| k.ends_with(suffix))
                    .map_or(0, |(_, v)| *v)
            };
            decision_cache.insert(
                run.subject.name.clone(),
                (get("decision_cache.hits"), get("decision_cache.misses")),
            );
        }
    }

    let report = Report {
        date: today(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: cpu_model(),
        envoy: envoy_version(),
        load: format!(
            "wrk -t{} -c{} -d{}s, {} rounds, {MIX} distinct routed requests in turn; Envoy --concurrency 1 pinned to one CPU, the external processor (one thread) on the same CPU, wrk and the upstream on the other; all on loopback",
            options.threads, options.connections, options.duration, options.rounds
        ),
        rows,
        startup: running
            .iter()
            .map(|r| Startup {
                configuration: r.subject.name.clone(),
                first_routed_response_ms: r.started.as_secs_f64() * 1000.0,
            })
            .collect(),
        startup_runs: options.startup_runs,
        celroute_wasm_bytes: std::fs::metadata(wasm_dir.join("celroute.wasm"))?.len(),
        decision_cache,
    };
    let markdown = markdown(&report);
    println!("\n{markdown}");
    std::fs::write(options.out.join("results.md"), &markdown)?;
    std::fs::write(
        options.out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "written: {} and results.json",
        options.out.join("results.md").display()
    );
    drop(running);
    drop(upstream);
    Ok(())
}

fn rps(result: &WrkResult) -> f64 {
    result.requests as f64 / (result.duration_us.max(1) as f64 / 1e6)
}

/// Before measuring: Lua and celroute must make the same decision for every
/// request (routed and denied), and every configuration must answer the mix.
fn check_same_decisions(running: &[Running]) -> Result<()> {
    let mut requests = bench::routed_requests(MIX);
    requests.extend(bench::denied_requests());
    let mut checked = 0;
    for lua in running {
        let (Filter::Lua { rules } | Filter::ExtProc { rules, .. }) = lua.subject.filter else {
            continue;
        };
        for cel in running {
            if let Filter::Celroute { rules: r, .. } = cel.subject.filter {
                if r == rules {
                    checked += same_decisions(
                        (&lua.subject.name, &lua.envoy),
                        (&cel.subject.name, &cel.envoy),
                        &requests,
                    )?;
                }
            }
        }
    }
    if checked == 0 {
        println!(
            "no Lua or ext_proc configuration with a celroute one of the same size to compare"
        );
    } else {
        println!(
            "Lua, ext_proc and celroute agree on {checked} decisions (routed and denied requests)"
        );
    }
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn envoy_version() -> String {
    celroute_tests::envoy::binary()
        .ok()
        .and_then(|bin| Command::new(bin).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .and_then(|v| {
            let build = v.split("version:").nth(1)?.split_whitespace().next()?;
            build
                .split('/')
                .nth(1)
                .map(|version| format!("Envoy {version}"))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC) as YYYY-MM-DD, from `date`.
fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "Measured {} on {} cores ({}), {}; {}.\n\n",
        report.date, report.cores, report.cpu, report.envoy, report.load
    );
    out.push_str("| configuration | route | req/s | p50 | p99 | CPU per request (Envoy + processor) | Envoy peak RSS | ratio to Envoy alone | ratio to header-only floor |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &report.rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.1} µs{} | {} | {:.2} | {:.2} |\n",
            row.configuration,
            row.route,
            row.requests_per_second,
            row.p50_us,
            row.p99_us,
            row.cpu_us_per_request,
            row.processor_cpu_us_per_request
                .map_or(String::new(), |p| format!(" ({p:.1} µs processor)")),
            row.peak_rss_mib
                .map_or("?".to_string(), |m| format!("{m:.0} MiB")),
            row.ratio_to_envoy,
            row.ratio_to_floor
        ));
    }
    out.push_str(&format!(
        "\ncelroute.wasm: {} bytes. Start to first routed response (median of {} starts): ",
        report.celroute_wasm_bytes, report.startup_runs
    ));
    let starts: Vec<String> = report
        .startup
        .iter()
        .map(|s| format!("{} {:.0} ms", s.configuration, s.first_routed_response_ms))
        .collect();
    out.push_str(&starts.join("; "));
    out.push_str(".\n");
    if !report.decision_cache.is_empty() {
        let caches: Vec<String> = report
            .decision_cache
            .iter()
            .map(|(name, (hits, misses))| format!("{name}: {hits} hits, {misses} misses"))
            .collect();
        out.push_str(&format!("Decision cache: {}.\n", caches.join("; ")));
    }
    out
}
