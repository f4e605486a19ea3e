//! Model servers' Prometheus text metrics (`/metrics` of vLLM or SGLang):
//! the few series the policy's `live.scrape.metrics` names, reduced to one
//! value per live field.
//!
//! Only sample lines are read (`name{labels} value [timestamp]`); comments,
//! other metrics and lines that do not parse are skipped. A field takes the
//! first of its metric names that appears; its series (one per model, say)
//! are summed, except for a field that is a share (`*_usage`,
//! `*_utilization`), whose largest series counts.

use super::Signal;

/// Bodies longer than this are read only up to it.
pub const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;

/// The value of each field whose metric appears in `text`.
pub fn parse_metrics(text: &str, wanted: &[(String, Vec<String>)]) -> Vec<(String, Signal)> {
    let text = match text.char_indices().nth(MAX_METRICS_BYTES) {
        Some((cut, _)) => &text[..cut],
        None => text,
    };
    // (field, metric index in preference order, value)
    let mut found: Vec<(usize, usize, f64)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        for (f, (field, names)) in wanted.iter().enumerate() {
            let Some(rank) = names.iter().position(|n| n == name) else {
                continue;
            };
            let share = field.ends_with("_usage") || field.ends_with("_utilization");
            match found.iter_mut().find(|(ff, r, _)| *ff == f && *r == rank) {
                Some((_, _, total)) if share => *total = total.max(value),
                Some((_, _, total)) => *total += value,
                None => found.push((f, rank, value)),
            }
        }
    }
    let mut out = Vec::new();
    for (f, (field, _)) in wanted.iter().enumerate() {
        let best = found
            .iter()
            .filter(|(ff, _, _)| *ff == f)
            .min_by_key(|(_, rank, _)| *rank);
        if let Some((_, _, value)) = best.filter(|(_, _, v)| v.is_finite()) {
            out.push((field.clone(), Signal::Number(*value)));
        }
    }
    out
}

/// `name{labels} value [timestamp]` -> (name, value).
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let rest = if rest.starts_with('{') {
        // Label values may hold '}' inside quotes: find the closing brace
        // outside them.
        let mut quoted = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        &rest[close? + 1..]
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value: f64 = match value {
        "+Inf" | "-Inf" | "NaN" => return None,
        v => v.parse().ok()?,
    };
    Some((name, value))
}
