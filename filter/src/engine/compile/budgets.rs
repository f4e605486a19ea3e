//! The `budgets:` section: each budget's name (a CEL field name, unique),
//! unit, limit, window, key header and clusters, validated.

use std::collections::BTreeSet;

use super::super::document::BudgetDocument;
use super::super::error::{did_you_mean, PolicyError};
use super::super::policy::fnv1a64;
use super::super::spending::{SpendBudget, SpendUnit, Window};
use super::options::check_header_name;

/// Most budgets a policy may declare: each read is a shared-data lookup.
pub(super) const MAX_BUDGETS: usize = 16;

/// The budgets of `documents`; each problem is recorded in `errors`.
pub(super) fn compile(
    documents: &[BudgetDocument],
    clusters: &[String],
    errors: &mut Vec<PolicyError>,
) -> Vec<SpendBudget> {
    if documents.len() > MAX_BUDGETS {
        errors.push(PolicyError::new(
            "budgets",
            format!("{} budgets; at most {MAX_BUDGETS}", documents.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, doc) in documents.iter().enumerate() {
        let at = format!("budgets[{i}] '{}'", doc.name);
        let before = errors.len();
        if !is_identifier(&doc.name) {
            errors.push(PolicyError::new(
                &at,
                "a budget's name is read in CEL as budget.<name>: lower-case letters, digits and '_', starting with a letter".to_string(),
            ));
        } else if !seen.insert(doc.name.clone()) {
            errors.push(PolicyError::new(
                &at,
                "another budget has this name".to_string(),
            ));
        }
        let unit = SpendUnit::parse(&doc.unit);
        if unit.is_none() {
            errors.push(PolicyError::new(
                format!("{at}.unit"),
                format!("'{}' is not one of tokens, cost, egress_bytes", doc.unit),
            ));
        }
        let window = Window::parse(&doc.window);
        if window.is_none() {
            errors.push(PolicyError::new(
                format!("{at}.window"),
                format!("'{}' is not one of minute, hour, day, month", doc.window),
            ));
        }
        if !(doc.limit.is_finite() && doc.limit >= 0.0) {
            errors.push(PolicyError::new(
                format!("{at}.limit"),
                format!("{} is not a number from 0 up", doc.limit),
            ));
        }
        if let Some(name) = &doc.key_header {
            check_header_name(&format!("{at}.key_header"), name, errors);
        }
        for cluster in doc.clusters.iter().flatten() {
            if !clusters.contains(cluster) {
                let hint = did_you_mean(cluster, clusters.iter().map(String::as_str))
                    .map(|c| format!(" (did you mean '{c}'?)"))
                    .unwrap_or_default();
                errors.push(PolicyError::new(
                    format!("{at}.clusters"),
                    format!("'{cluster}' is not in the inventory{hint}"),
                ));
            }
        }
        let (Some(unit), Some(window)) = (unit, window) else {
            continue;
        };
        if errors.len() > before {
            continue;
        }
        let clusters: Option<BTreeSet<String>> =
            doc.clusters.as_ref().map(|c| c.iter().cloned().collect());
        let counted = format!(
            "{}|{}|{}|{}|{:?}",
            doc.name,
            doc.unit,
            doc.window,
            doc.key_header.as_deref().unwrap_or(""),
            clusters
        );
        out.push(SpendBudget {
            name: doc.name.clone(),
            key_header: doc.key_header.clone(),
            unit,
            limit: doc.limit,
            window,
            clusters,
            fingerprint: format!("{:012x}", fnv1a64(counted.as_bytes()) & 0xffff_ffff_ffff),
        });
    }
    out
}

fn is_identifier(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
