//! `policy-host check`: load each policy into the filter and report its errors.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use policy_host::policy::LoadedPolicy;
use policy_host::vm::FilterModule;

#[derive(Args)]
pub struct CheckArgs {
    policies: Vec<PathBuf>,
}

pub fn run(module: &FilterModule, args: CheckArgs) -> Result<bool> {
    if args.policies.is_empty() {
        bail!("name at least one policy file");
    }
    let mut ok = true;
    for path in &args.policies {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) => {
                println!("{}: cannot read: {e}", path.display());
                ok = false;
                continue;
            }
        };
        match LoadedPolicy::load(module, &text) {
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
