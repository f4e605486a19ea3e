//! `policy-host publish`: validate and test a policy, then write it as an
//! ECDS resource into the directory a running Envoy watches; with
//! `--watch`, again on every change.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use policy_host::publish::{publish, test_file_for, PublishOptions};
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
}

pub fn run(module: &FilterModule, wasm: &Path, args: PublishArgs) -> Result<bool> {
    let code = match args.code {
        Some(code) => code,
        None => {
            std::fs::canonicalize(wasm).with_context(|| format!("resolving {}", wasm.display()))?
        }
    };
    let options = PublishOptions {
        to: args.to,
        name: args.name,
        code,
        run_tests: !args.no_tests,
    };
    let policy = &args.policy;
    if !args.watch {
        return Ok(once(module, policy, &options));
    }
    // Poll the policy and its tests; republish on every change.
    let mut last = fingerprint(policy);
    once(module, policy, &options);
    println!("watching {} (Ctrl-C to stop)", policy.display());
    loop {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = fingerprint(policy);
        if now != last {
            last = now;
            once(module, policy, &options);
        }
    }
}

fn once(module: &FilterModule, policy: &Path, options: &PublishOptions) -> bool {
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
