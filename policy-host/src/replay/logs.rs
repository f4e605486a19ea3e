//! Reading access logs: JSON lines whose `decision` field holds celroute's
//! decision record (and `usage` its usage record), as the shipped Envoy
//! configs write them, either as a JSON string (Envoy's `json_format`) or as
//! an object. A line that is itself a record is read too.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use celroute::engine::decision_log::RECORD_VERSION;
use serde_json::{Map, Value as Json};

use super::Fate;

/// One logged decision.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `FILE:LINE`.
    pub at: String,
    pub record: Map<String, Json>,
    pub usage: Option<Usage>,
}

/// What a logged usage record says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Whether the response carried usage.
    pub reported: bool,
    pub tokens: u64,
    pub cost: f64,
}

/// The decision records of some log files.
#[derive(Debug, Clone, Default)]
pub struct LogRead {
    pub entries: Vec<LogEntry>,
    /// Non-empty lines read.
    pub lines: u64,
    /// Lines without a decision record.
    pub without_record: u64,
}

impl LogEntry {
    /// The outcome as logged.
    pub fn fate(&self) -> Result<Fate> {
        let text = |key: &str| self.record.get(key).and_then(Json::as_str);
        match text("action") {
            Some("route") => match text("cluster") {
                Some(cluster) => Ok(Fate::Routed(cluster.to_string())),
                None => bail!("{}: a route record without its cluster", self.at),
            },
            Some("deny") => {
                let status = (self.record.get("status").and_then(Json::as_u64))
                    .and_then(|s| u16::try_from(s).ok());
                match status {
                    Some(status) => Ok(Fate::Denied(status)),
                    None => bail!("{}: a deny record without its status", self.at),
                }
            }
            other => bail!("{}: unknown action {other:?} in the record", self.at),
        }
    }

    /// The deciding rule as logged.
    pub fn rule(&self) -> String {
        (self.record.get("rule").and_then(Json::as_str))
            .unwrap_or_default()
            .to_string()
    }

    /// The version of the policy that made the decision.
    pub fn policy_version(&self) -> String {
        (self.record.get("policy").and_then(Json::as_str))
            .unwrap_or("unknown")
            .to_string()
    }
}

/// Reads every line of `paths`. A line that is not JSON, or a record of a
/// newer schema, is an error naming its file and line.
pub fn read_logs(paths: &[PathBuf]) -> Result<LogRead> {
    let mut read = LogRead::default();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the log {}", path.display()))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            read.lines += 1;
            let at = format!("{}:{}", path.display(), number + 1);
            let value: Json =
                serde_json::from_str(line).with_context(|| format!("{at}: not a JSON line"))?;
            let Json::Object(object) = value else {
                bail!("{at}: a log line must be a JSON object");
            };
            let (record, usage) = if is_record(&object) {
                (Some(object), None)
            } else {
                (
                    embedded(object.get("decision")),
                    embedded(object.get("usage")),
                )
            };
            let Some(record) = record else {
                read.without_record += 1;
                continue;
            };
            let version = record.get("v").and_then(Json::as_u64).unwrap_or(0);
            if version != RECORD_VERSION {
                bail!(
                    "{at}: decision record version {version}; this policy-host reads version {RECORD_VERSION}"
                );
            }
            read.entries.push(LogEntry {
                at,
                record,
                usage: usage.map(|u| Usage {
                    reported: u.get("reported").and_then(Json::as_bool).unwrap_or(false),
                    tokens: ["prompt_tokens", "completion_tokens"]
                        .iter()
                        .filter_map(|k| u.get(*k).and_then(Json::as_u64))
                        .sum(),
                    cost: u.get("cost").and_then(Json::as_f64).unwrap_or(0.0),
                }),
            });
        }
    }
    Ok(read)
}

fn is_record(object: &Map<String, Json>) -> bool {
    object.contains_key("v") && object.contains_key("action")
}

/// A record held as an object, or as JSON text (Envoy's `json_format`
/// writes filter state as a string); `None` for an absent one (`null`, `-`).
fn embedded(value: Option<&Json>) -> Option<Map<String, Json>> {
    match value? {
        Json::Object(object) => Some(object.clone()),
        Json::String(text) => match serde_json::from_str(text) {
            Ok(Json::Object(object)) => Some(object),
            _ => None,
        },
        _ => None,
    }
}
