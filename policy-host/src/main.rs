//! `policy-host`: test, explain and check celroute policies offline, with the
//! same `celroute.wasm` Envoy runs; run any proxy-wasm filter through a
//! scripted exchange.

use std::path::PathBuf;
use std::process::ExitCode;

mod commands;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use policy_host::default_wasm_candidates;
use policy_host::vm::FilterModule;

#[derive(Parser)]
#[command(
    name = "policy-host",
    version,
    about = "Test, explain and check celroute policies with the real celroute.wasm; run any proxy-wasm filter through a scripted exchange"
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
    Test(commands::test::TestArgs),
    /// Decide one request and explain the decision rule by rule.
    Eval(commands::eval::EvalArgs),
    /// Load each policy into the filter and report its errors.
    Check(commands::check::CheckArgs),
    /// Validate and test a policy, then write it as an ECDS resource into the
    /// directory a running Envoy watches (atomically: temporary file, rename).
    Publish(commands::publish::PublishArgs),
    /// Decide logged requests (access-log decision records) again with a
    /// new policy: traffic per cluster before and after, moves, denials,
    /// cost and constraints.
    Replay(commands::replay::ReplayArgs),
    /// Run a scripted exchange (requests, time, shutdown) through any
    /// proxy-wasm filter given with --wasm, and show what Envoy would show.
    Run(commands::run::RunArgs),
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
        Command::Test(args) => commands::test::run(&module, args),
        Command::Eval(args) => commands::eval::run(&module, args),
        Command::Check(args) => commands::check::run(&module, args),
        Command::Publish(args) => commands::publish::run(&module, &wasm, args),
        Command::Replay(args) => commands::replay::run(&module, args),
        Command::Run(args) => commands::run::run(&module, args),
    }
}
