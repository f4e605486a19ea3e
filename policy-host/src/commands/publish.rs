//! `policy-host publish`: validate and test a policy, then write it as an
//! ECDS resource into the directory a running Envoy watches; with
//! `--watch`, again on every change.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use policy_host::publish::{publish, test_file_for, PublishOptions};
use policy_host::replay::{read_logs, render, replay, PolicySource, ReplayReport};
use policy_host::vm::FilterModule;

#[derive(Args)]
pub struct PublishArgs {
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
    /// Replay these access logs with the policy before publishing, and
    /// print what would change (see `policy-host replay`).
    #[arg(long, value_name = "LOG")]
    replay: Vec<PathBuf>,
    /// With --replay: refuse to publish when more than PCT percent of the
    /// replayed requests would change cluster or outcome.
    #[arg(long, value_name = "PCT", requires = "replay")]
    max_shift: Option<f64>,
    /// Publish even when the replay gate refuses.
    #[arg(long)]
    force: bool,
}

/// The replay gate: logs to replay, the largest shift allowed, and whether
/// a refusal is overridden.
struct Gate {
    logs: Vec<PathBuf>,
    max_shift: Option<f64>,
    force: bool,
}

impl Gate {
    /// Replays the logs with `policy`; `Err` with the reason when the gate
    /// refuses (and is not forced).
    fn check(&self, module: &FilterModule, policy: &Path) -> Result<(), String> {
        if self.logs.is_empty() {
            return Ok(());
        }
        let refusal = match self.replay(module, policy) {
            Ok(report) => {
                print!("{}", render::text(&report));
                let shift = report.shift_percent();
                if report.constraint_violations > 0 {
                    Some(format!(
                        "{} replayed requests were routed outside a constraint",
                        report.constraint_violations
                    ))
                } else if report.replayed == 0 {
                    Some(format!(
                        "none of the {} logged requests could be replayed",
                        report.records
                    ))
                } else {
                    self.max_shift.filter(|max| shift > *max).map(|max| {
                        format!(
                            "{shift:.2}% of the replayed traffic would change cluster or outcome, more than --max-shift {max}%"
                        )
                    })
                }
            }
            Err(e) => Some(format!("the replay failed: {e:#}")),
        };
        match refusal {
            Some(reason) if self.force => {
                println!("publishing despite the replay gate (--force): {reason}");
                Ok(())
            }
            Some(reason) => Err(format!(
                "not published: {reason} (--force publishes anyway)"
            )),
            None => Ok(()),
        }
    }

    fn replay(&self, module: &FilterModule, policy: &Path) -> Result<ReplayReport> {
        let log = read_logs(&self.logs)?;
        replay(module, &log, &PolicySource::read(policy)?, None)
    }
}

pub fn run(module: &FilterModule, wasm: &Path, args: PublishArgs) -> Result<bool> {
    let code = match args.code {
        Some(code) => code,
        None => {
            std::fs::canonicalize(wasm).with_context(|| format!("resolving {}", wasm.display()))?
        }
    };
    if let Some(max) = args.max_shift {
        if !(0.0..=100.0).contains(&max) {
            bail!("--max-shift {max}: give a percentage from 0 to 100");
        }
    }
    let options = PublishOptions {
        to: args.to,
        name: args.name,
        code,
        run_tests: !args.no_tests,
    };
    let gate = Gate {
        logs: args.replay,
        max_shift: args.max_shift,
        force: args.force,
    };
    let policy = &args.policy;
    if !args.watch {
        return Ok(once(module, policy, &options, &gate));
    }
    // Poll the policy and its tests; republish on every change.
    let mut last = fingerprint(policy);
    once(module, policy, &options, &gate);
    println!("watching {} (Ctrl-C to stop)", policy.display());
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = fingerprint(policy);
        if now != last {
            last = now;
            once(module, policy, &options, &gate);
        }
    }
}

fn once(module: &FilterModule, policy: &Path, options: &PublishOptions, gate: &Gate) -> bool {
    if let Err(refused) = gate.check(module, policy) {
        println!("{}: {refused}", policy.display());
        return false;
    }
    match publish(module, policy, options) {
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
    }
}

/// The policy's and its tests' bytes: a change in either republishes.
fn fingerprint(policy: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(policy).unwrap_or_default();
    if let Some(tests) = test_file_for(policy) {
        bytes.extend(std::fs::read(tests).unwrap_or_default());
    }
    bytes
}
