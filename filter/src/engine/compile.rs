//! Validation and compilation: a [`PolicyDocument`] becomes a [`Policy`] whose
//! CEL programs are compiled once, and whose referenced attributes are known,
//! so that per request nothing is parsed and only those attributes are fetched.
//!
//! Every check that can be made before traffic arrives is made here: unknown
//! fields, clusters, attributes, cluster fields, functions and variables are
//! load errors, so a bad policy never replaces a good one.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::Env;

use super::analysis::{column_of, policy_env, Analysis, Field, FunctionCatalog};
use super::attributes::AttributeNeeds;
use super::cost;
use super::document::{PolicyDocument, RuleDocument};
use super::error::{did_you_mean, PolicyError, PolicyErrors};
use super::inventory::{clusters_map, compile_clusters, cost_inventory, to_val};
use super::limits::{self, Limits};
use super::policy::{
    content_version, Action, Cluster, Expression, LogLevel, Policy, Rule,
    DEFAULT_NO_CANDIDATE_STATUS, DEFAULT_ROUTING_HEADER, MAX_DECISION_CACHE_SIZE,
    RESERVED_RULE_NAMES,
};

impl Policy {
    /// Parses, validates and compiles a policy document (YAML or JSON).
    pub fn load(text: &str) -> Result<Policy, PolicyErrors> {
        limits::check_document_size(text)?;
        let document = PolicyDocument::parse(text)?;
        Policy::compile(document, &content_version(text))
    }

    /// Validates and compiles a parsed document; `version` identifies its content.
    pub fn compile(document: PolicyDocument, version: &str) -> Result<Policy, PolicyErrors> {
        let (limits, mut errors) = Limits::from_document(document.options.limits.as_ref());
        limits::check_counts(&document, &limits, &mut errors);
        if !errors.is_empty() {
            // Nothing is compiled for a policy over its size limits.
            return Err(PolicyErrors(errors));
        }
        let env = Arc::new(policy_env());
        let known = FunctionCatalog::new(&env);

        let (clusters, cluster_fields) = compile_clusters(&document, &mut errors);
        let inventory = cost_inventory(&clusters);
        let cluster_index = |name: &str| clusters.iter().position(|(n, _)| n == name);
        let cluster_names = || clusters.iter().map(|(n, _)| n.as_str());

        let mut needs = AttributeNeeds::default();
        let mut programs = 0;
        let mut rules = Vec::new();
        let mut seen_names = BTreeSet::new();
        for (i, rule) in document.rules.iter().enumerate() {
            let at = format!("rule '{}' (rules[{i}])", rule.name);
            check_rule_name(rule, &at, &mut seen_names, &mut errors);
            let mut compile_field = |field: Field, source: &str, errors: &mut Vec<PolicyError>| {
                let scope = Scope {
                    env: &env,
                    known: &known,
                    cluster_fields: &cluster_fields,
                    inventory: &inventory,
                    limits: &limits,
                };
                let compiled = compile_expression(&scope, field, source, &mut needs);
                match compiled {
                    Ok(expression) => {
                        programs += 1;
                        Some(expression)
                    }
                    Err(message) => {
                        errors.push(PolicyError::new(format!("{at}: {}", field.name()), message));
                        None
                    }
                }
            };
            // None: no `when`; Some(None): a `when` that failed to compile.
            let when = rule
                .when
                .as_deref()
                .map(|source| compile_field(Field::When, source, &mut errors));
            let actions = [
                rule.require.is_some(),
                rule.deny.is_some(),
                rule.prefer.is_some(),
                rule.order_by.is_some(),
            ];
            let count = actions.iter().filter(|set| **set).count();
            if count != 1 {
                errors.push(PolicyError::new(
                    at.clone(),
                    format!(
                        "a rule has exactly one of require, deny, prefer, order_by (this one has {count})"
                    ),
                ));
                continue;
            }
            if rule.descending.is_some() && rule.order_by.is_none() {
                errors.push(PolicyError::new(
                    at.clone(),
                    "descending only goes with order_by",
                ));
            }
            let action = if let Some(source) = &rule.require {
                compile_field(Field::Require, source, &mut errors).map(Action::Require)
            } else if let Some(source) = &rule.order_by {
                compile_field(Field::OrderBy, source, &mut errors).map(|key| Action::OrderBy {
                    key,
                    descending: rule.descending.unwrap_or(false),
                })
            } else if let Some(deny) = &rule.deny {
                if !(200..=599).contains(&deny.status) {
                    errors.push(PolicyError::new(
                        format!("{at}: deny.status"),
                        format!("{} is not an HTTP status from 200 to 599", deny.status),
                    ));
                }
                Some(Action::Deny {
                    status: deny.status,
                    message: deny
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("denied by rule '{}'", rule.name)),
                })
            } else if let Some(prefer) = &rule.prefer {
                if prefer.is_empty() {
                    errors.push(PolicyError::new(
                        format!("{at}: prefer"),
                        "lists no cluster",
                    ));
                }
                let mut indices = Vec::new();
                for name in prefer {
                    match cluster_index(name) {
                        Some(c) => indices.push(c),
                        None => errors.push(unknown_cluster(
                            &format!("{at}: prefer"),
                            name,
                            cluster_names(),
                        )),
                    }
                }
                Some(Action::Prefer(indices))
            } else {
                None
            };
            match (action, when) {
                (Some(action), None) => rules.push(Rule {
                    name: rule.name.clone(),
                    when: None,
                    action,
                }),
                (Some(action), Some(Some(when))) => rules.push(Rule {
                    name: rule.name.clone(),
                    when: Some(when),
                    action,
                }),
                // An error was recorded; the policy will be rejected.
                _ => {}
            }
        }

        let default = match &document.default {
            Some(name) => match cluster_index(name) {
                Some(c) => Some(c),
                None => {
                    errors.push(unknown_cluster("default", name, cluster_names()));
                    None
                }
            },
            None => None,
        };

        let options = &document.options;
        let routing_header = options
            .routing_header
            .clone()
            .unwrap_or_else(|| DEFAULT_ROUTING_HEADER.to_string());
        check_header_name("options.routing_header", &routing_header, &mut errors);
        if let Some(name) = &options.decision_header {
            check_header_name("options.decision_header", name, &mut errors);
        }
        let log_level = match options.log_level.as_deref().unwrap_or("info") {
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
        };
        let no_candidate_status = options
            .no_candidate_status
            .unwrap_or(DEFAULT_NO_CANDIDATE_STATUS);
        if !(200..=599).contains(&no_candidate_status) {
            errors.push(PolicyError::new(
                "options.no_candidate_status",
                format!("{no_candidate_status} is not an HTTP status from 200 to 599"),
            ));
        }
        let cache_size = options
            .decision_cache_size
            .unwrap_or(super::cache::DEFAULT_DECISION_CACHE_SIZE);
        if cache_size > MAX_DECISION_CACHE_SIZE {
            errors.push(PolicyError::new(
                "options.decision_cache_size",
                format!(
                    "{cache_size} is more than {MAX_DECISION_CACHE_SIZE} entries (each worker allocates its cache at load)"
                ),
            ));
        }

        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }
        let clusters_value = to_val(clusters_map(&clusters));
        let clusters = clusters
            .into_iter()
            .map(|(name, value)| Cluster {
                name,
                value: to_val(value),
            })
            .collect::<Vec<_>>();
        let mut policy = Policy {
            name: document.name,
            env,
            clusters,
            clusters_value,
            rules,
            default,
            bound_roots: needs.roots(),
            cache_size: if needs.cacheable() { cache_size } else { 0 },
            needs,
            routing_header,
            decision_header: options.decision_header.clone(),
            log_level,
            no_candidate_status,
            version: version.to_string(),
            programs,
            limits,
        };
        policy.precompute_per_cluster()?;
        Ok(policy)
    }
}

fn check_rule_name(
    rule: &RuleDocument,
    at: &str,
    seen: &mut BTreeSet<String>,
    errors: &mut Vec<PolicyError>,
) {
    let valid = !rule.name.is_empty()
        && rule.name.len() <= 128
        && rule
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        errors.push(PolicyError::new(
            at,
            "a rule name is 1 to 128 characters of letters, digits, '-', '_' and '.'",
        ));
    }
    if RESERVED_RULE_NAMES.contains(&rule.name.as_str()) {
        errors.push(PolicyError::new(
            at,
            format!(
                "'{}' is reserved for decisions no rule makes; rename the rule",
                rule.name
            ),
        ));
    }
    if !seen.insert(rule.name.clone()) {
        errors.push(PolicyError::new(at, "another rule has the same name"));
    }
}

fn check_header_name(at: &str, name: &str, errors: &mut Vec<PolicyError>) {
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

fn unknown_cluster<'a>(
    at: &str,
    name: &str,
    known: impl Iterator<Item = &'a str> + Clone,
) -> PolicyError {
    let hint = match did_you_mean(name, known.clone()) {
        Some(close) => format!(" (did you mean '{close}'?)"),
        None => format!(
            " (the inventory has: {})",
            known.collect::<Vec<_>>().join(", ")
        ),
    };
    PolicyError::new(at, format!("unknown cluster '{name}'{hint}"))
}

/// What compiling one expression needs to know of the policy around it.
struct Scope<'a> {
    env: &'a Arc<Env>,
    known: &'a FunctionCatalog,
    cluster_fields: &'a BTreeSet<String>,
    inventory: &'a cost::Inventory,
    limits: &'a Limits,
}

/// Longest piece of an expression quoted in an error message.
const QUOTE_CHARS: usize = 120;

/// An expression as error messages quote it: whole when short.
fn quoted(source: &str) -> String {
    match source.char_indices().nth(QUOTE_CHARS) {
        Some((end, _)) => format!("`{}…` ({} bytes)", &source[..end], source.len()),
        None => format!("`{source}`"),
    }
}

/// Compiles one expression and records what it reads; the error names the
/// position inside the expression and quotes it.
///
/// Its length and nesting are checked before the parser reads it, and its
/// estimated cost before anything evaluates it.
fn compile_expression(
    scope: &Scope<'_>,
    field: Field,
    source: &str,
    needs: &mut AttributeNeeds,
) -> Result<Expression, String> {
    let limits = scope.limits;
    let length = source.len() as u64;
    if length > limits.max_expression_length {
        return Err(limits::exceeded_message(
            &format!("the expression is {length} bytes long"),
            limits::MAX_EXPRESSION_LENGTH,
            limits.max_expression_length,
        ));
    }
    let depth = cost::nesting_depth(source) as u64;
    if depth > limits.max_expression_depth {
        return Err(format!(
            "{} in {}",
            limits::exceeded_message(
                &format!("the expression nests {depth} levels deep"),
                limits::MAX_EXPRESSION_DEPTH,
                limits.max_expression_depth,
            ),
            quoted(source)
        ));
    }
    let (env, known, cluster_fields) = (scope.env, scope.known, scope.cluster_fields);
    let program = env.compile(source).map_err(|errors| {
        let first = errors.errors.first();
        match first {
            Some(e) => format!(
                "syntax error at line {}, column {}: {} in {}",
                e.pos.0,
                e.pos.1 + 1,
                e.msg,
                quoted(source)
            ),
            None => format!("syntax error in {}", quoted(source)),
        }
    })?;
    let mut analysis = Analysis {
        known,
        cluster_fields,
        field,
        needs: AttributeNeeds::default(),
        problems: Vec::new(),
        scopes: Vec::new(),
    };
    analysis.walk(program.expression());
    if let Some((id, problem)) = analysis.problems.into_iter().next() {
        let position = program
            .source_info()
            .offset_for(id)
            // A field selection is recorded at its '.': point at the field name.
            .map(|(start, _)| {
                let start = start as usize;
                let at_dot = source.as_bytes().get(start) == Some(&b'.');
                column_of(source, start + usize::from(at_dot))
            })
            .map(|(line, column)| format!(" at line {line}, column {column}"))
            .unwrap_or_default();
        return Err(format!("{problem}{position} in {}", quoted(source)));
    }
    let cost = cost::estimate(program.expression(), scope.inventory);
    if cost > limits.max_expression_cost {
        return Err(format!(
            "{} in {}",
            limits::exceeded_message(
                &format!("the expression's worst case is estimated at {cost}"),
                limits::MAX_EXPRESSION_COST,
                limits.max_expression_cost,
            ),
            quoted(source)
        ));
    }
    let request_independent = analysis.needs.attributes.is_empty();
    needs.attributes.extend(analysis.needs.attributes);
    match analysis.needs.headers {
        Some(super::attributes::HeaderNeeds::All) => needs.add_all_headers(),
        Some(super::attributes::HeaderNeeds::Named(names)) => {
            for name in names {
                needs.add_header(&name);
            }
        }
        None => {}
    }
    let fast = match field {
        Field::When => super::fast::Fast::recognise(program.expression()),
        Field::Require | Field::OrderBy => None,
    };
    Ok(Expression {
        executable: super::budget::instrument(program.expression()),
        cost,
        request_independent,
        per_cluster: None,
        fast,
    })
}
