//! The policy's options (`options:`): routing and decision headers, log
//! level, the no-candidate status and the decision cache size, validated.

use super::super::document::OptionsDocument;
use super::super::error::PolicyError;
use super::super::policy::{
    LogLevel, DEFAULT_NO_CANDIDATE_STATUS, DEFAULT_ROUTING_HEADER, MAX_DECISION_CACHE_SIZE,
};

/// Options after validation, defaults filled in.
pub(super) struct Options {
    pub(super) routing_header: String,
    pub(super) decision_header: Option<String>,
    pub(super) fallback_header: Option<String>,
    pub(super) log_level: LogLevel,
    pub(super) no_candidate_status: u16,
    pub(super) cache_size: usize,
    pub(super) max_body_bytes: u64,
}

impl Options {
    /// The options of `document`; each problem is recorded in `errors`.
    pub(super) fn compile(document: &OptionsDocument, errors: &mut Vec<PolicyError>) -> Options {
        let routing_header = document
            .routing_header
            .clone()
            .unwrap_or_else(|| DEFAULT_ROUTING_HEADER.to_string());
        check_header_name("options.routing_header", &routing_header, errors);
        if let Some(name) = &document.decision_header {
            check_header_name("options.decision_header", name, errors);
        }
        if let Some(name) = &document.fallback_header {
            check_header_name("options.fallback_header", name, errors);
            if *name == routing_header {
                errors.push(PolicyError::new(
                    "options.fallback_header",
                    format!(
                        "'{name}' is the routing header; the fallback needs a header of its own"
                    ),
                ));
            }
        }
        let no_candidate_status = document
            .no_candidate_status
            .unwrap_or(DEFAULT_NO_CANDIDATE_STATUS);
        if !(200..=599).contains(&no_candidate_status) {
            errors.push(PolicyError::new(
                "options.no_candidate_status",
                format!("{no_candidate_status} is not an HTTP status from 200 to 599"),
            ));
        }
        let cache_size = document
            .decision_cache_size
            .unwrap_or(super::super::cache::DEFAULT_DECISION_CACHE_SIZE);
        if cache_size > MAX_DECISION_CACHE_SIZE {
            errors.push(PolicyError::new(
                "options.decision_cache_size",
                format!(
                    "{cache_size} is more than {MAX_DECISION_CACHE_SIZE} entries (each worker allocates its cache at load)"
                ),
            ));
        }
        let max_body_bytes = document
            .max_body_bytes
            .unwrap_or(super::super::body::DEFAULT_MAX_BODY_BYTES);
        if !(1..=super::super::body::MAX_MAX_BODY_BYTES).contains(&max_body_bytes) {
            errors.push(PolicyError::new(
                "options.max_body_bytes",
                format!(
                    "{max_body_bytes} is not from 1 to {} bytes (each request held holds its body)",
                    super::super::body::MAX_MAX_BODY_BYTES
                ),
            ));
        }
        Options {
            max_body_bytes,
            routing_header,
            decision_header: document.decision_header.clone(),
            fallback_header: document.fallback_header.clone(),
            log_level: log_level(document.log_level.as_deref(), errors),
            no_candidate_status,
            cache_size,
        }
    }
}

fn log_level(level: Option<&str>, errors: &mut Vec<PolicyError>) -> LogLevel {
    match level.unwrap_or("info") {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        "off" => LogLevel::Off,
        other => {
            errors.push(PolicyError::new(
                "options.log_level",
                format!("'{other}' is not one of trace, debug, info, warn, error, off"),
            ));
            LogLevel::Info
        }
    }
}

pub(super) fn check_header_name(at: &str, name: &str, errors: &mut Vec<PolicyError>) {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if !valid {
        errors.push(PolicyError::new(
            at,
            format!("'{name}' is not a lower-case HTTP header name (letters, digits, '-', '_')"),
        ));
    }
}
