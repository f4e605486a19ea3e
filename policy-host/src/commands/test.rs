//! `policy-host test`: run policy test files, report, check coverage.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use policy_host::report::{self, Reporter};
use policy_host::testing::{discover, run_file};
use policy_host::vm::FilterModule;

#[derive(Args)]
pub struct TestArgs {
    paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "human")]
    format: TestFormat,
    /// Report, per policy, which rules took effect in some case.
    #[arg(long)]
    coverage: bool,
    /// Fail when any policy's rule coverage is below PCT (implies --coverage).
    #[arg(long, value_name = "PCT")]
    threshold: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum TestFormat {
    Human,
    Json,
    Junit,
}

pub fn run(module: &FilterModule, args: TestArgs) -> Result<bool> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        args.paths
    };
    let files = discover(&paths)?;
    let results: Vec<_> = files.iter().map(|f| run_file(module, f)).collect();
    let reporter: Box<dyn Reporter> = match args.format {
        TestFormat::Human => Box::new(report::Human {
            coverage: args.coverage || args.threshold.is_some(),
        }),
        TestFormat::Json => Box::new(report::Json),
        TestFormat::Junit => Box::new(report::Junit),
    };
    print!("{}", reporter.render(&results));
    let failed: usize = results.iter().map(|r| r.failed()).sum();
    let below = match args.threshold {
        Some(threshold) => report::coverage_below(&results, threshold),
        None => Vec::new(),
    };
    for failure in &below {
        eprintln!("policy-host: {failure}");
    }
    Ok(failed == 0 && below.is_empty())
}
