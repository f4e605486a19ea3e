//! ORCA load reports in the `endpoint-load-metrics` response header, as
//! Envoy and vLLM write them: `TEXT key=value, ...` or `JSON {...}`. The
//! binary form (`BIN`) is not read.
//!
//! Keys map to live fields: `named_metrics.num_requests_waiting` is
//! `queue_depth`, `named_metrics.kv_cache_usage_perc` is `kv_cache_usage`,
//! `cpu_utilization` stays itself, and any other `named_metrics.<name>` is
//! `<name>` (readable when the policy declares it in `live.fields`).

use super::Signal;
use crate::engine::is_field_name;

pub const ORCA_HEADER: &str = "endpoint-load-metrics";
/// Request header asking a vLLM server for a load report, and in which form.
pub const ORCA_FORMAT_HEADER: &str = "endpoint-load-metrics-format";

/// Headers longer than this are ignored.
const MAX_HEADER: usize = 8 * 1024;
/// At most this many values per report.
const MAX_VALUES: usize = 32;

/// The live values in one header value; an unreadable report yields none.
pub fn parse_orca(header: &str) -> Vec<(String, Signal)> {
    if header.len() > MAX_HEADER {
        return Vec::new();
    }
    let header = header.trim();
    let pairs: Vec<(String, f64)> = if let Some(text) = header.strip_prefix("TEXT ") {
        text.split(',')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                let value: f64 = value.trim().parse().ok()?;
                Some((key.trim().to_string(), value))
            })
            .collect()
    } else if let Some(json) = header.strip_prefix("JSON ") {
        json_pairs(json)
    } else {
        Vec::new()
    };
    pairs
        .into_iter()
        .filter(|(_, value)| value.is_finite())
        .filter_map(|(key, value)| Some((field_of(&key)?, Signal::Number(value))))
        .take(MAX_VALUES)
        .collect()
}

/// `{"cpu_utilization": 0.3, "named_metrics": {"kv_cache_usage_perc": 0.5}}`
/// or the flattened `"named_metrics.x"` keys.
fn json_pairs(json: &str) -> Vec<(String, f64)> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in map {
        match value {
            serde_json::Value::Number(n) => out.extend(n.as_f64().map(|v| (key, v))),
            serde_json::Value::Object(named) if key == "named_metrics" => {
                for (name, value) in named {
                    if let Some(v) = value.as_f64() {
                        out.push((format!("named_metrics.{name}"), v));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The live field an ORCA key feeds, if any.
fn field_of(key: &str) -> Option<String> {
    let field = match key {
        "named_metrics.num_requests_waiting" => "queue_depth",
        "named_metrics.kv_cache_usage_perc" => "kv_cache_usage",
        "cpu_utilization" => "cpu_utilization",
        other => other.strip_prefix("named_metrics.")?,
    };
    (is_field_name(field) && !super::feed::OBSERVED.contains(&field)).then(|| field.to_string())
}
