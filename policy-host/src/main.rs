//! `policy-host`: test, explain and check celroute policies offline, with the
//! same `celroute.wasm` Envoy runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use policy_host::policy::LoadedPolicy;
use policy_host::publish::{publish, test_file_for, PublishOptions};
use policy_host::request::{Headers, RequestSpec};
use policy_host::testing::{describe_decision, discover, run_file};
use policy_host::vm::FilterModule;
use policy_host::{default_wasm_candidates, report};

#[derive(Parser)]
#[command(
    name = "policy-host",
    version,
    about = "Test, explain and check celroute policies with the real celroute.wasm"
)]
struct Cli {
    /// The filter to run (default: the workspace's target/wasm32-wasip1/release/celroute.wasm).
    #[arg(long, global = true, value_name = "PATH")]
    wasm: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run policy test files (*.test.yaml) found under PATHS (default: policies).
    Test {
        paths: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "human")]
        format: TestFormat,
        /// Report, per policy, which rules took effect in some case.
        #[arg(long)]
        coverage: bool,
        /// Fail when any policy's rule coverage is below PCT (implies --coverage).
        #[arg(long, value_name = "PCT")]
        threshold: Option<f64>,
    },
    /// Decide one request and explain the decision rule by rule.
    Eval {
        policy: PathBuf,
        #[arg(long, default_value = "GET")]
        method: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// The :authority.
        #[arg(long)]
        host: Option<String>,
        /// A request header as NAME=VALUE (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Client address, such as 10.1.2.3:5000 or [2001:db8::1]:5000.
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_enum, default_value = "human")]
        format: EvalFormat,
    },
    /// Load each policy into the filter and report its errors.
    Check { policies: Vec<PathBuf> },
    /// Validate and test a policy, then write it as an ECDS resource into the
    /// directory a running Envoy watches (atomically: temporary file, rename).
    Publish {
        policy: PathBuf,
        /// The directory Envoy watches (the `watched_directory` of its config).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The ECDS resource name; the file written is NAME.yaml.
        #[arg(long, default_value = "celroute")]
        name: String,
        /// The celroute.wasm path to put in the resource, as Envoy opens it
        /// (default: the absolute path of the filter that validated the policy).
        #[arg(long, value_name = "PATH")]
        code: Option<PathBuf>,
        /// Publish even without running the policy's test file.
        #[arg(long)]
        no_tests: bool,
        /// Keep running and republish whenever the policy or its tests change.
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TestFormat {
    Human,
    Json,
    Junit,
}

#[derive(Clone, Copy, ValueEnum)]
enum EvalFormat {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("policy-host: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn wasm_path(wasm: Option<PathBuf>) -> Result<PathBuf> {
    Ok(match wasm {
        Some(path) => path,
        None => {
            let candidates = default_wasm_candidates();
            match candidates.iter().find(|p| p.is_file()) {
                Some(path) => path.clone(),
                None => bail!(
                    "celroute.wasm not found (looked for target/wasm32-wasip1/release/celroute.wasm here and in parent directories): build it with `make wasm`, or pass --wasm PATH"
                ),
            }
        }
    })
}

/// Runs a command; `Ok(false)` means it ran and found failures.
fn run(cli: Cli) -> Result<bool> {
    let wasm = wasm_path(cli.wasm)?;
    let module = FilterModule::load(&wasm)?;
    match cli.command {
        Command::Test {
            paths,
            format,
            coverage,
            threshold,
        } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("policies")]
            } else {
                paths
            };
            let files = discover(&paths)?;
            let results: Vec<_> = files.iter().map(|f| run_file(&module, f)).collect();
            let show_coverage = coverage || threshold.is_some();
            let output = match format {
                TestFormat::Human => report::human(&results, show_coverage),
                TestFormat::Json => report::json(&results),
                TestFormat::Junit => report::junit(&results),
            };
            print!("{output}");
            let failed: usize = results.iter().map(|r| r.failed()).sum();
            let mut ok = failed == 0;
            if let Some(threshold) = threshold {
                for r in results.iter().filter(|r| r.error.is_none()) {
                    if r.coverage_percent() < threshold {
                        eprintln!(
                            "policy-host: {}: rule coverage {:.0}% is below the threshold {threshold}%",
                            r.policy.display(),
                            r.coverage_percent()
                        );
                        ok = false;
                    }
                }
            }
            Ok(ok)
        }
        Command::Eval {
            policy,
            method,
            path,
            host,
            headers,
            source,
            format,
        } => {
            let text =
                std::fs::read(&policy).with_context(|| format!("reading {}", policy.display()))?;
            let mut loaded = LoadedPolicy::load(&module, &text)
                .map_err(|e| anyhow::anyhow!("{} did not load:\n{e}", policy.display()))?;
            let mut pairs = Vec::new();
            for header in &headers {
                let (name, value) = header
                    .split_once('=')
                    .with_context(|| format!("--header {header}: expected NAME=VALUE"))?;
                pairs.push((name.to_string(), value.to_string()));
            }
            let spec = RequestSpec {
                method: Some(method),
                path: Some(path),
                host,
                headers: Headers::List(pairs),
                source,
                ..RequestSpec::default()
            };
            let evaluation = loaded.evaluate(&spec).map_err(|e| anyhow::anyhow!("{e}"))?;
            match format {
                EvalFormat::Json => {
                    let mut value = serde_json::to_value(&evaluation.decision)?;
                    if let Some(body) = &evaluation.body {
                        value["body"] = serde_json::Value::String(body.clone());
                    }
                    println!("{}", serde_json::to_string_pretty(&value)?);
                }
                EvalFormat::Human => {
                    println!("{}", describe_decision(&evaluation.decision));
                    for line in report::explain(&evaluation.decision, &loaded.description) {
                        println!("  {line}");
                    }
                    for error in &evaluation.decision.errors {
                        println!("  error: {error}");
                    }
                }
            }
            Ok(true)
        }
        Command::Check { policies } => {
            if policies.is_empty() {
                bail!("name at least one policy file");
            }
            let mut ok = true;
            for path in &policies {
                let text = match std::fs::read(path) {
                    Ok(text) => text,
                    Err(e) => {
                        println!("{}: cannot read: {e}", path.display());
                        ok = false;
                        continue;
                    }
                };
                match LoadedPolicy::load(&module, &text) {
                    Ok(loaded) => println!(
                        "{}: ok ({} clusters, {} rules; reads {})",
                        path.display(),
                        loaded.description.clusters.len(),
                        loaded.description.rules.len(),
                        if loaded.description.reads.is_empty() {
                            "no request attribute".to_string()
                        } else {
                            loaded.description.reads.join(", ")
                        }
                    ),
                    Err(e) => {
                        ok = false;
                        for line in e.to_string().lines() {
                            println!("{}: {line}", path.display());
                        }
                    }
                }
            }
            Ok(ok)
        }
        Command::Publish {
            policy,
            to,
            name,
            code,
            no_tests,
            watch,
        } => {
            let code = match code {
                Some(code) => code,
                None => std::fs::canonicalize(&wasm)
                    .with_context(|| format!("resolving {}", wasm.display()))?,
            };
            let options = PublishOptions {
                to,
                name,
                code,
                run_tests: !no_tests,
            };
            let once = |options: &PublishOptions| match publish(&module, &policy, options) {
                Ok(published) => {
                    println!(
                        "published {} version {} to {}{}",
                        policy.display(),
                        published.version,
                        published.file.display(),
                        match published.tests_passed {
                            Some(n) => format!(" ({n} tests passed)"),
                            None => String::new(),
                        }
                    );
                    true
                }
                Err(refused) => {
                    println!("{}: {refused}", policy.display());
                    false
                }
            };
            if !watch {
                return Ok(once(&options));
            }
            // Poll the policy and its tests; republish on every change.
            let fingerprint = || {
                let tests = test_file_for(&policy);
                let mut bytes = std::fs::read(&policy).unwrap_or_default();
                if let Some(tests) = tests {
                    bytes.extend(std::fs::read(tests).unwrap_or_default());
                }
                bytes
            };
            let mut last = fingerprint();
            once(&options);
            println!("watching {} (Ctrl-C to stop)", policy.display());
            loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let now = fingerprint();
                if now != last {
                    last = now;
                    once(&options);
                }
            }
        }
    }
}
