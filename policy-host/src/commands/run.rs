//! `policy-host run`: a scripted exchange through any proxy-wasm filter,
//! reported step by step as Envoy would show it.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use policy_host::run::{title, Script};
use policy_host::vm::FilterModule;

#[derive(Args)]
pub struct RunArgs {
    /// The script (YAML): clusters, route, steps (see docs/policy-host.md).
    script: PathBuf,
    /// The plugin configuration, from a file (instead of the script's `configuration`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The VM configuration, from a file (instead of the script's `vm_configuration`).
    #[arg(long, value_name = "FILE")]
    vm_config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// Each step's report, then the failed expectations.
    Text,
    /// One JSON document: steps, end state, failures.
    Json,
}

pub fn run(module: &FilterModule, args: RunArgs) -> Result<bool> {
    let read =
        |path: &PathBuf| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let text = std::fs::read_to_string(&args.script)
        .with_context(|| format!("reading {}", args.script.display()))?;
    let script = Script::parse(&text).with_context(|| format!("in {}", args.script.display()))?;
    let configuration = args.config.as_ref().map(read).transpose()?;
    let vm_configuration = args.vm_config.as_ref().map(read).transpose()?;
    let outcome = script
        .run(module, configuration, vm_configuration)
        .with_context(|| format!("running {}", args.script.display()))?;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "steps": outcome.steps,
                "end": outcome.end,
                "failures": outcome.failures,
            }))?
        ),
        Format::Text => {
            for (step, report) in script.steps.iter().zip(&outcome.steps) {
                println!("--- step {}: {}", report["step"], title(step));
                println!("{}", serde_json::to_string_pretty(report)?);
            }
            println!("--- end");
            println!("{}", serde_json::to_string_pretty(&outcome.end)?);
            for failure in &outcome.failures {
                println!("FAIL {failure}");
            }
            let expected = script.steps.iter().filter(|s| s.expect.is_some()).count();
            println!(
                "{} steps, {} with expectations, {} expectation(s) not met",
                outcome.steps.len(),
                expected,
                outcome.failures.len()
            );
        }
    }
    Ok(outcome.failures.is_empty())
}
