//! Limits on what a policy may ask of the proxy: checked when it loads,
//! before any of its expressions runs, so that a hostile or careless policy
//! is refused quickly with an error naming the limit, and never hangs,
//! overflows the stack of, or exhausts the memory of the proxy.
//!
//! Each limit has a default that real policies stay far below, and may be
//! raised with `options.limits`, up to a hard maximum that no policy may pass.

use super::document::{LimitsDocument, PolicyDocument};
use super::error::PolicyError;

/// Largest policy document read, in bytes; checked before parsing. Not an
/// option: the options are inside the document.
pub const MAX_DOCUMENT_BYTES: usize = 2 << 20;

/// Deepest nesting of YAML/JSON values in the inventory.
pub const MAX_INVENTORY_DEPTH: usize = 32;

/// One limit: its option name, default and hard maximum.
#[derive(Debug, Clone, Copy)]
pub struct LimitSpec {
    /// The key under `options.limits`.
    pub name: &'static str,
    pub default: u64,
    pub maximum: u64,
    /// What it bounds, for the reference and error messages.
    pub what: &'static str,
}

/// `options.limits.max_rules`.
pub const MAX_RULES: LimitSpec = LimitSpec {
    name: "max_rules",
    default: 1_000,
    maximum: 5_000,
    what: "rules in the policy (each compiles at most two CEL programs)",
};
/// `options.limits.max_clusters`.
pub const MAX_CLUSTERS: LimitSpec = LimitSpec {
    name: "max_clusters",
    default: 256,
    maximum: 4_096,
    what: "clusters in the inventory",
};
/// `options.limits.max_expression_length`.
pub const MAX_EXPRESSION_LENGTH: LimitSpec = LimitSpec {
    name: "max_expression_length",
    default: 4_096,
    maximum: 65_536,
    what: "bytes in one CEL expression",
};
/// `options.limits.max_expression_depth`.
pub const MAX_EXPRESSION_DEPTH: LimitSpec = LimitSpec {
    name: "max_expression_depth",
    default: 32,
    maximum: 64,
    what: "nesting depth of one CEL expression",
};
/// `options.limits.max_expression_cost`.
pub const MAX_EXPRESSION_COST: LimitSpec = LimitSpec {
    name: "max_expression_cost",
    default: 100_000,
    maximum: 10_000_000,
    what: "estimated worst-case cost of one CEL expression",
};
/// `options.limits.evaluation_budget`.
pub const EVALUATION_BUDGET: LimitSpec = LimitSpec {
    name: "evaluation_budget",
    default: 1_000_000,
    maximum: 100_000_000,
    what: "cost one decision (or the load-time precomputation) may spend",
};

/// Every limit, in the order the reference lists them.
pub const ALL: [LimitSpec; 6] = [
    MAX_RULES,
    MAX_CLUSTERS,
    MAX_EXPRESSION_LENGTH,
    MAX_EXPRESSION_DEPTH,
    MAX_EXPRESSION_COST,
    EVALUATION_BUDGET,
];

/// The limits in force for one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_rules: u64,
    pub max_clusters: u64,
    pub max_expression_length: u64,
    pub max_expression_depth: u64,
    pub max_expression_cost: u64,
    pub evaluation_budget: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_rules: MAX_RULES.default,
            max_clusters: MAX_CLUSTERS.default,
            max_expression_length: MAX_EXPRESSION_LENGTH.default,
            max_expression_depth: MAX_EXPRESSION_DEPTH.default,
            max_expression_cost: MAX_EXPRESSION_COST.default,
            evaluation_budget: EVALUATION_BUDGET.default,
        }
    }
}

impl Limits {
    /// The limits a document asks for: defaults, raised or lowered by
    /// `options.limits` within each hard maximum. A value over a maximum,
    /// or zero, is an error, and the limit keeps its default.
    pub(crate) fn from_document(document: Option<&LimitsDocument>) -> (Limits, Vec<PolicyError>) {
        let mut errors = Vec::new();
        let Some(document) = document else {
            return (Limits::default(), errors);
        };
        let mut pick = |spec: LimitSpec, asked: Option<u64>| match asked {
            None => spec.default,
            Some(n) if n == 0 || n > spec.maximum => {
                errors.push(PolicyError::new(
                    format!("options.limits.{}", spec.name),
                    format!(
                        "{n} is outside 1 to {} (the hard maximum of {}; default {})",
                        spec.maximum, spec.what, spec.default
                    ),
                ));
                spec.default
            }
            Some(n) => n,
        };
        let limits = Limits {
            max_rules: pick(MAX_RULES, document.max_rules),
            max_clusters: pick(MAX_CLUSTERS, document.max_clusters),
            max_expression_length: pick(MAX_EXPRESSION_LENGTH, document.max_expression_length),
            max_expression_depth: pick(MAX_EXPRESSION_DEPTH, document.max_expression_depth),
            max_expression_cost: pick(MAX_EXPRESSION_COST, document.max_expression_cost),
            evaluation_budget: pick(EVALUATION_BUDGET, document.evaluation_budget),
        };
        (limits, errors)
    }
}

/// The message for a count or size over its limit: says what was found,
/// names the limit and how to raise it. `found` reads "has 1200 rules".
pub(crate) fn exceeded_message(found: &str, spec: LimitSpec, limit: u64) -> String {
    if limit < spec.maximum {
        format!(
            "{found}, over the limit of {limit} (options.limits.{name}); options.limits.{name} raises it, up to {}",
            spec.maximum,
            name = spec.name
        )
    } else {
        format!(
            "{found}, over the limit of {limit} (options.limits.{}, at its hard maximum)",
            spec.name
        )
    }
}

/// Refuses a policy with more rules or clusters than its limits allow,
/// before anything of it is compiled.
pub(crate) fn check_counts(
    document: &PolicyDocument,
    limits: &Limits,
    errors: &mut Vec<PolicyError>,
) {
    let rules = document.rules.len() as u64;
    if rules > limits.max_rules {
        errors.push(PolicyError::new(
            "rules",
            exceeded_message(
                &format!("the policy has {rules} rules"),
                MAX_RULES,
                limits.max_rules,
            ),
        ));
    }
    let clusters = document.clusters.len() as u64;
    if clusters > limits.max_clusters {
        errors.push(PolicyError::new(
            "clusters",
            exceeded_message(
                &format!("the inventory has {clusters} clusters"),
                MAX_CLUSTERS,
                limits.max_clusters,
            ),
        ));
    }
    for (name, attributes) in &document.clusters {
        for (field, value) in attributes {
            let depth = json_depth(value);
            if depth > MAX_INVENTORY_DEPTH {
                errors.push(PolicyError::new(
                    format!("clusters.{name}.{field}"),
                    format!(
                        "nests {depth} levels deep, over the limit of {MAX_INVENTORY_DEPTH} for inventory values"
                    ),
                ));
            }
        }
    }
}

/// Refuses a document too large to parse safely, before parsing it.
pub(crate) fn check_document_size(text: &str) -> Result<(), PolicyError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(PolicyError::new(
            "policy",
            format!(
                "the document is {} bytes, over the limit of {MAX_DOCUMENT_BYTES} bytes a policy may have",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// How deeply a JSON value nests (a scalar is 0).
pub(crate) fn json_depth(value: &serde_json::Value) -> usize {
    // Iterative: the depth is measured before anything trusts it.
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match value {
            serde_json::Value::Array(items) => {
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            serde_json::Value::Object(fields) => {
                stack.extend(fields.values().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}
