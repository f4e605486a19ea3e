//! `policy-host eval`: decide one request and explain it rule by rule.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use policy_host::policy::LoadedPolicy;
use policy_host::report;
use policy_host::request::{Headers, RequestSpec};
use policy_host::testing::describe_decision;
use policy_host::vm::FilterModule;

#[derive(Args)]
pub struct EvalArgs {
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
}

#[derive(Clone, Copy, ValueEnum)]
enum EvalFormat {
    Human,
    Json,
}

pub fn run(module: &FilterModule, args: EvalArgs) -> Result<bool> {
    let policy = &args.policy;
    let text = std::fs::read(policy).with_context(|| format!("reading {}", policy.display()))?;
    let mut loaded = LoadedPolicy::load(module, &text)
        .map_err(|e| anyhow::anyhow!("{} did not load:\n{e}", policy.display()))?;
    let mut pairs = Vec::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once('=')
            .with_context(|| format!("--header {header}: expected NAME=VALUE"))?;
        pairs.push((name.to_string(), value.to_string()));
    }
    let spec = RequestSpec {
        method: Some(args.method),
        path: Some(args.path),
        host: args.host,
        headers: Headers::List(pairs),
        source: args.source,
        ..RequestSpec::default()
    };
    let evaluation = loaded.evaluate(&spec)?;
    match args.format {
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
