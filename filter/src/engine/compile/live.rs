//! The `live:` block: staleness, breaker and feed, validated; and the live
//! fields the policy may read.

use super::super::document::{LiveDocument, ScrapeDocument};
use super::super::error::PolicyError;
use super::super::live::{
    catalog, default_scrape_metrics, FeedOptions, LiveFields, LiveOptions, ScrapeOptions,
    BUILTIN_FIELDS, DEFAULT_FEED_EVERY_MS, DEFAULT_FEED_PATH, DEFAULT_FEED_TIMEOUT_MS,
    DEFAULT_SCRAPE_EVERY_MS, DEFAULT_SCRAPE_PATH, DEFAULT_SCRAPE_TIMEOUT_MS,
};
use super::rules::cluster_index;
use crate::signals::feed::OBSERVED;

/// The most named values a policy may declare.
const MAX_FIELDS: usize = 64;

/// The options and field catalog of `document`; problems go to `errors`.
pub(super) fn compile(
    document: Option<&LiveDocument>,
    cluster_names: &[String],
    errors: &mut Vec<PolicyError>,
) -> (LiveOptions, LiveFields) {
    let mut options = LiveOptions::default();
    let Some(document) = document else {
        return (options, catalog(&[]));
    };
    if let Some(text) = &document.stale_after {
        if let Some(ms) = duration("live.stale_after", text, 100, 3_600_000, errors) {
            options.stale_after_ms = ms;
        }
    }
    if let Some(breaker) = &document.breaker {
        if let Some(n) = breaker.consecutive_failures {
            if !(1..=1000).contains(&n) {
                errors.push(PolicyError::new(
                    "live.breaker.consecutive_failures",
                    format!("{n} is not from 1 to 1000"),
                ));
            } else {
                options.breaker_failures = n;
            }
        }
        if let Some(path) = &breaker.probe_path {
            if check_path("live.breaker.probe_path", path, errors) {
                options.probe_path = path.clone();
            }
        }
        if let Some(text) = &breaker.cool_down {
            if let Some(ms) = duration("live.breaker.cool_down", text, 100, 3_600_000, errors) {
                options.breaker_cool_down_ms = ms;
            }
        }
    }
    if let Some(feed) = &document.feed {
        options.feed = feed_options(feed, cluster_names, errors);
    }
    check_fields(&document.fields, errors);
    let catalog = catalog(&document.fields);
    if let Some(scrape) = &document.scrape {
        options.scrape = scrape_options(scrape, cluster_names, &catalog, errors);
    }
    (options, catalog)
}

fn scrape_options(
    scrape: &ScrapeDocument,
    cluster_names: &[String],
    catalog: &LiveFields,
    errors: &mut Vec<PolicyError>,
) -> Option<ScrapeOptions> {
    if scrape.clusters.is_empty() {
        errors.push(PolicyError::new("live.scrape.clusters", "lists no cluster"));
    }
    for (i, name) in scrape.clusters.iter().enumerate() {
        if let Err(e) = cluster_index(cluster_names, name, &format!("live.scrape.clusters[{i}]")) {
            errors.push(e);
        }
    }
    let path = scrape
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_SCRAPE_PATH.into());
    check_path("live.scrape.path", &path, errors);
    let (every, timeout) = period(
        "live.scrape",
        (scrape.every.as_deref(), scrape.timeout.as_deref()),
        (DEFAULT_SCRAPE_EVERY_MS, DEFAULT_SCRAPE_TIMEOUT_MS),
        errors,
    );
    let metrics: Vec<(String, Vec<String>)> = match &scrape.metrics {
        Some(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => default_scrape_metrics(),
    };
    for (field, names) in &metrics {
        let at = format!("live.scrape.metrics.{field}");
        if OBSERVED.contains(&field.as_str()) || !catalog.contains(field) {
            errors.push(PolicyError::new(
                at.clone(),
                format!("'{field}' is not a live field a scrape may set (a built-in reported field, or one listed in live.fields)"),
            ));
        }
        if names.is_empty() || names.iter().any(|n| !is_metric_name(n)) {
            errors.push(PolicyError::new(
                at,
                "lists Prometheus metric names ([a-zA-Z_:][a-zA-Z0-9_:]*), at least one",
            ));
        }
    }
    Some(ScrapeOptions {
        clusters: scrape.clusters.clone(),
        path,
        every_ms: every?,
        timeout_ms: timeout?,
        metrics,
    })
}

/// A Prometheus metric name.
fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && name.len() <= 200
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn feed_options(
    feed: &super::super::document::FeedDocument,
    cluster_names: &[String],
    errors: &mut Vec<PolicyError>,
) -> Option<FeedOptions> {
    let path = feed
        .path
        .clone()
        .unwrap_or_else(|| DEFAULT_FEED_PATH.into());
    let valid_path =
        path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_graphic());
    if !valid_path {
        errors.push(PolicyError::new(
            "live.feed.path",
            format!("'{path}' is not a request path (starts with '/', printable ASCII, at most 1024 bytes)"),
        ));
    }
    if feed.cluster.is_empty() || cluster_names.contains(&feed.cluster) {
        errors.push(PolicyError::new(
            "live.feed.cluster",
            format!(
                "'{}' must name the Envoy cluster that serves the feed, not a routing target",
                feed.cluster
            ),
        ));
    }
    let (every, timeout) = period(
        "live.feed",
        (feed.every.as_deref(), feed.timeout.as_deref()),
        (DEFAULT_FEED_EVERY_MS, DEFAULT_FEED_TIMEOUT_MS),
        errors,
    );
    Some(FeedOptions {
        cluster: feed.cluster.clone(),
        path,
        every_ms: every?,
        timeout_ms: timeout?,
    })
}

/// True for a request path: starts with '/', printable ASCII, at most 1024 bytes.
fn check_path(at: &str, path: &str, errors: &mut Vec<PolicyError>) -> bool {
    let valid =
        path.starts_with('/') && path.len() <= 1024 && path.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        errors.push(PolicyError::new(
            at,
            format!("'{path}' is not a request path (starts with '/', printable ASCII, at most 1024 bytes)"),
        ));
    }
    valid
}

fn check_fields(fields: &[String], errors: &mut Vec<PolicyError>) {
    if fields.len() > MAX_FIELDS {
        errors.push(PolicyError::new(
            "live.fields",
            format!("{} named values; at most {MAX_FIELDS}", fields.len()),
        ));
    }
    for (i, name) in fields.iter().enumerate() {
        let at = format!("live.fields[{i}]");
        if !is_field_name(name) {
            errors.push(PolicyError::new(
                at,
                format!("'{name}' is not a field name (a lower-case letter, then letters, digits or '_', at most 64)"),
            ));
        } else if BUILTIN_FIELDS.iter().any(|(b, _, _)| b == name) {
            errors.push(PolicyError::new(
                at,
                format!(
                    "'{name}' is a built-in live field; list only the named values a feed adds"
                ),
            ));
        } else if fields[..i].contains(name) {
            errors.push(PolicyError::new(at, format!("'{name}' is listed twice")));
        }
    }
}

/// A live field or feed value name: `[a-z][a-z0-9_]{0,63}`.
pub fn is_field_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A callout's `every` (50 ms to 1 h) and `timeout` (10 ms to 1 min), or
/// their defaults; `None` for one that is invalid (recorded in `errors`).
fn period(
    at: &str,
    (every, timeout): (Option<&str>, Option<&str>),
    (default_every, default_timeout): (u64, u64),
    errors: &mut Vec<PolicyError>,
) -> (Option<u64>, Option<u64>) {
    let every = match every {
        Some(text) => duration(&format!("{at}.every"), text, 50, 3_600_000, errors),
        None => Some(default_every),
    };
    let timeout = match timeout {
        Some(text) => duration(&format!("{at}.timeout"), text, 10, 60_000, errors),
        None => Some(default_timeout),
    };
    (every, timeout)
}

/// `250ms`, `5s`, `2m`, as milliseconds within `min..=max`.
fn duration(
    at: &str,
    text: &str,
    min: u64,
    max: u64,
    errors: &mut Vec<PolicyError>,
) -> Option<u64> {
    let parsed = parse_duration(text);
    match parsed {
        Some(ms) if (min..=max).contains(&ms) => Some(ms),
        Some(ms) => {
            errors.push(PolicyError::new(
                at,
                format!("{text} ({ms} ms) is not from {min} ms to {max} ms"),
            ));
            None
        }
        None => {
            errors.push(PolicyError::new(
                at,
                format!("'{text}' is not a duration such as 250ms, 5s or 2m"),
            ));
            None
        }
    }
}

/// Parses `<digits>(ms|s|m)`.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => return None,
    };
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        _ => None,
    }
}
