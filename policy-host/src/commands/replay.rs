//! `policy-host replay`: decide logged requests again with a new policy and
//! report what would change.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use policy_host::replay::{read_logs, render, replay, PolicySource, ReplayReport};
use policy_host::vm::FilterModule;

#[derive(Args)]
pub struct ReplayArgs {
    /// Access logs: JSON lines holding celroute's decision records.
    #[arg(required = true, value_name = "LOG")]
    logs: Vec<PathBuf>,
    /// The policy to replay them with.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// Compare with this policy's decisions instead of the logged ones.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write the report here instead of to standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Html,
}

pub fn run(module: &FilterModule, args: ReplayArgs) -> Result<bool> {
    let log = read_logs(&args.logs)?;
    let policy = PolicySource::read(&args.policy)?;
    let baseline = args
        .baseline
        .as_deref()
        .map(PolicySource::read)
        .transpose()?;
    let report = replay(module, &log, &policy, baseline.as_ref())?;
    let text = match args.format {
        Format::Text => render::text(&report),
        Format::Json => render::json(&report),
        Format::Html => render::html(&report),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("{}", summary(&report));
            println!("report written to {}", path.display());
        }
        None => print!("{text}"),
    }
    // A route outside a constraint that applied is a failure.
    Ok(report.constraint_violations == 0)
}

/// One line: replayed, changed, unknown.
pub fn summary(report: &ReplayReport) -> String {
    format!(
        "replayed {} of {} logged requests: {} changed ({:.2}%), {} newly denied, {} newly allowed, {} unknown, {} constraint violations",
        report.replayed,
        report.records,
        report.changed,
        report.shift_percent(),
        report.newly_denied,
        report.newly_allowed,
        report.unknown_total,
        report.constraint_violations
    )
}
