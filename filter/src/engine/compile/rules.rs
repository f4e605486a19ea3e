//! Rules: each one's name, its optional `when` and its one action, compiled
//! and checked against the inventory.

use std::collections::BTreeSet;

use super::super::analysis::Field;
use super::super::attributes::AttributeNeeds;
use super::super::document::RuleDocument;
use super::super::error::{did_you_mean, PolicyError};
use super::super::policy::{Action, Expression, Rule, RESERVED_RULE_NAMES};
use super::expression::{compile_expression, Scope};

/// A split without `sticky_by` hashes the request's id: each request on
/// its own, in proportion to the weights.
const DEFAULT_STICKY_BY: &str = "request.id";

/// Compiles rules one after the other, collecting what they read.
pub(super) struct RuleCompiler<'a> {
    pub(super) scope: Scope<'a>,
    pub(super) cluster_names: &'a [String],
    pub(super) needs: AttributeNeeds,
    pub(super) programs: usize,
    seen_names: BTreeSet<String>,
}

impl<'a> RuleCompiler<'a> {
    pub(super) fn new(scope: Scope<'a>, cluster_names: &'a [String]) -> RuleCompiler<'a> {
        RuleCompiler {
            scope,
            cluster_names,
            needs: AttributeNeeds::default(),
            programs: 0,
            seen_names: BTreeSet::new(),
        }
    }

    /// The compiled rule; `None` when it has an error (recorded in `errors`).
    pub(super) fn compile(
        &mut self,
        i: usize,
        rule: &RuleDocument,
        errors: &mut Vec<PolicyError>,
    ) -> Option<Rule> {
        let at = format!("rule '{}' (rules[{i}])", rule.name);
        check_rule_name(rule, &at, &mut self.seen_names, errors);
        // None: no `when`; Some(None): a `when` that failed to compile.
        let when = rule
            .when
            .as_deref()
            .map(|source| self.expression(&at, Field::When, source, errors));
        let action = self.action(&at, rule, errors)?;
        match when {
            None => Some(Rule {
                name: rule.name.clone(),
                when: None,
                action,
            }),
            Some(Some(when)) => Some(Rule {
                name: rule.name.clone(),
                when: Some(when),
                action,
            }),
            Some(None) => None,
        }
    }

    fn expression(
        &mut self,
        at: &str,
        field: Field,
        source: &str,
        errors: &mut Vec<PolicyError>,
    ) -> Option<Expression> {
        match compile_expression(&self.scope, field, source, &mut self.needs) {
            Ok(expression) => {
                self.programs += 1;
                Some(expression)
            }
            Err(message) => {
                errors.push(PolicyError::new(format!("{at}: {}", field.name()), message));
                None
            }
        }
    }

    fn action(
        &mut self,
        at: &str,
        rule: &RuleDocument,
        errors: &mut Vec<PolicyError>,
    ) -> Option<Action> {
        let actions = [
            rule.require.is_some(),
            rule.deny.is_some(),
            rule.prefer.is_some(),
            rule.order_by.is_some(),
            rule.split.is_some(),
        ];
        let count = actions.iter().filter(|set| **set).count();
        if count != 1 {
            errors.push(PolicyError::new(
                at,
                format!(
                    "a rule has exactly one of require, deny, prefer, order_by, split (this one has {count})"
                ),
            ));
            return None;
        }
        if rule.descending.is_some() && rule.order_by.is_none() {
            errors.push(PolicyError::new(at, "descending only goes with order_by"));
        }
        if rule.sticky_by.is_some() && rule.split.is_none() {
            errors.push(PolicyError::new(at, "sticky_by only goes with split"));
        }
        if let Some(source) = &rule.require {
            self.expression(at, Field::Require, source, errors)
                .map(Action::Require)
        } else if let Some(source) = &rule.order_by {
            self.expression(at, Field::OrderBy, source, errors)
                .map(|key| Action::OrderBy {
                    key,
                    descending: rule.descending.unwrap_or(false),
                })
        } else if let Some(source) = &rule.split {
            let weight = self.expression(at, Field::Split, source, errors);
            let key = rule.sticky_by.as_deref().unwrap_or(DEFAULT_STICKY_BY);
            let sticky_by = self.expression(at, Field::StickyBy, key, errors);
            Some(Action::Split {
                weight: weight?,
                sticky_by: Box::new(sticky_by?),
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
        } else {
            let prefer = rule.prefer.as_deref().unwrap_or_default();
            Some(Action::Prefer(self.prefer(at, prefer, errors)))
        }
    }

    fn prefer(&self, at: &str, prefer: &[String], errors: &mut Vec<PolicyError>) -> Vec<usize> {
        let at = format!("{at}: prefer");
        if prefer.is_empty() {
            errors.push(PolicyError::new(at.clone(), "lists no cluster"));
        }
        let mut indices = Vec::new();
        for name in prefer {
            match cluster_index(self.cluster_names, name, &at) {
                Ok(c) => indices.push(c),
                Err(e) => errors.push(e),
            }
        }
        indices
    }
}

/// The index of the cluster `name` in the inventory, or an error at `at`
/// that suggests a close name or lists the inventory.
pub(super) fn cluster_index(names: &[String], name: &str, at: &str) -> Result<usize, PolicyError> {
    if let Some(c) = names.iter().position(|n| n == name) {
        return Ok(c);
    }
    let known = names.iter().map(String::as_str);
    let hint = match did_you_mean(name, known.clone()) {
        Some(close) => format!(" (did you mean '{close}'?)"),
        None => format!(
            " (the inventory has: {})",
            known.collect::<Vec<_>>().join(", ")
        ),
    };
    Err(PolicyError::new(
        at,
        format!("unknown cluster '{name}'{hint}"),
    ))
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
