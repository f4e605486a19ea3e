//! Publishing a policy to a running Envoy through ECDS: validate it with the
//! real filter, run its tests, and only then write the ECDS resource file
//! atomically into the directory Envoy watches.
//!
//! Envoy (`config_discovery` with a `path_config_source` and a
//! `watched_directory`) reloads the file when it is renamed into place, and
//! applies the new policy to the very next request, reusing the VM.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::policy::LoadedPolicy;
use crate::report;
use crate::testing::run_file;
use crate::vm::FilterModule;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The directory Envoy watches.
    pub to: PathBuf,
    /// The ECDS resource name; the file is `<name>.yaml`. Default `celroute`.
    pub name: String,
    /// The `celroute.wasm` path written into the resource, as Envoy will open it.
    pub code: PathBuf,
    /// Run the policy's test file (`<policy>.test.yaml`) when there is one.
    pub run_tests: bool,
}

/// A policy that went live (as far as the file system is concerned).
#[derive(Debug, Clone)]
pub struct Published {
    pub file: PathBuf,
    /// The policy's content version, as the filter reports it and as `version_info`.
    pub version: String,
    /// Cases that passed, when a test file ran.
    pub tests_passed: Option<usize>,
}

/// Why nothing was written.
#[derive(Debug)]
pub enum Refused {
    /// The filter rejected the policy: its errors.
    Invalid(String),
    /// The policy's tests failed: the test report.
    TestsFailed(String),
    /// Reading the policy or writing the resource failed.
    Io(anyhow::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Invalid(errors) => {
                write!(f, "the policy is invalid; nothing was published:\n{errors}")
            }
            Refused::TestsFailed(report) => {
                write!(
                    f,
                    "the policy's tests failed; nothing was published:\n{report}"
                )
            }
            Refused::Io(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Refused {}

/// The test file beside a policy: `x.yaml` -> `x.test.yaml`.
pub fn test_file_for(policy: &Path) -> Option<PathBuf> {
    let stem = policy.file_stem()?.to_str()?;
    let dir = policy.parent().unwrap_or(Path::new(""));
    ["yaml", "yml", "json"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.test.{ext}")))
        .find(|p| p.is_file())
}

/// Validates, tests and publishes one policy.
pub fn publish(
    module: &FilterModule,
    policy: &Path,
    options: &PublishOptions,
) -> Result<Published, Refused> {
    let bytes = std::fs::read(policy)
        .with_context(|| format!("reading {}", policy.display()))
        .map_err(Refused::Io)?;
    let loaded = LoadedPolicy::load(module, &bytes).map_err(|e| Refused::Invalid(e.to_string()))?;
    let version = loaded.description.version.clone();
    drop(loaded);

    let mut tests_passed = None;
    if options.run_tests {
        if let Some(tests) = test_file_for(policy) {
            let result = run_file(module, &tests);
            if result.failed() > 0 {
                return Err(Refused::TestsFailed(report::human(&[result], false)));
            }
            tests_passed = Some(result.passed());
        }
    }

    // The filter accepted the bytes, so they are UTF-8.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let resource = ecds_resource(&options.name, &options.code, &text, &version);
    let file = options.to.join(format!("{}.yaml", options.name));
    write_atomically(&file, resource.as_bytes()).map_err(Refused::Io)?;
    Ok(Published {
        file,
        version,
        tests_passed,
    })
}

/// The ECDS resource: a `TypedExtensionConfig` holding the wasm filter with
/// the policy as its configuration.
pub fn ecds_resource(name: &str, code: &Path, policy: &str, version: &str) -> String {
    let resource = serde_json::json!({
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name,
                    "root_id": "celroute",
                    "allow_on_headers_stop_iteration": true,
                    "vm_config": {
                        "vm_id": "celroute",
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": code.display().to_string()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": policy
                    }
                }
            }
        }]
    });
    format!(
        "# Written by `policy-host publish`: the celroute filter for Envoy's ECDS.\n{}",
        serde_yaml::to_string(&resource).unwrap_or_default()
    )
}

/// Writes to a temporary file in the same directory, then renames it over
/// the target: Envoy sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("the target has no file name")?;
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        anyhow::Error::from(e).context(format!("renaming into {}", path.display()))
    })
}
