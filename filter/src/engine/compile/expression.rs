//! One CEL expression, from its text to a compiled [`Expression`]: its size
//! and nesting are checked before the parser reads it, what it reads and
//! what would fail on every request are found by walking its syntax tree,
//! and its worst-case cost is estimated before anything evaluates it.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::{Env, Program};

use super::super::analysis::{column_of, Analysis, Field, FunctionCatalog};
use super::super::attributes::{AttributeNeeds, HeaderNeeds};
use super::super::cost;
use super::super::limits::{self, Limits};
use super::super::live::{LiveFields, Reads};
use super::super::policy::Expression;

/// What compiling one expression needs to know of the policy around it.
pub(super) struct Scope<'a> {
    pub(super) env: &'a Arc<Env>,
    pub(super) known: &'a FunctionCatalog,
    pub(super) cluster_fields: &'a BTreeSet<String>,
    pub(super) live_fields: &'a LiveFields,
    pub(super) inventory: &'a cost::Inventory,
    pub(super) limits: &'a Limits,
    /// Each budget's name and limit.
    pub(super) budgets: &'a [(String, f64)],
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

/// Compiles one expression and adds what it reads to `needs`; the error
/// names the position inside the expression and quotes it.
pub(super) fn compile_expression(
    scope: &Scope<'_>,
    field: Field,
    source: &str,
    needs: &mut AttributeNeeds,
) -> Result<Expression, String> {
    check_size(scope.limits, source)?;
    let program = parse(scope.env, source)?;
    let analysis = analyse(scope, field, source, &program)?;
    let cost = cost::estimate(program.expression(), scope.inventory);
    if cost > scope.limits.max_expression_cost {
        return Err(format!(
            "{} in {}",
            limits::exceeded_message(
                &format!("the expression's worst case is estimated at {cost}"),
                limits::MAX_EXPRESSION_COST,
                scope.limits.max_expression_cost,
            ),
            quoted(source)
        ));
    }
    let reads = if !analysis.needs.attributes.is_empty() || !analysis.needs.budgets.is_empty() {
        Reads::Request
    } else if analysis.reads_live {
        Reads::Live
    } else {
        Reads::Inventory
    };
    merge(needs, analysis.needs);
    let fast = match field {
        Field::When => super::super::fast::Fast::recognise(program.expression()),
        Field::Require | Field::OrderBy | Field::Split | Field::StickyBy => None,
    };
    Ok(Expression {
        executable: super::super::budget::instrument(program.expression()),
        cost,
        reads,
        reads_live: analysis.reads_live,
        live_names: analysis.live_names,
        per_cluster: None,
        fast,
    })
}

/// Length and nesting, measured on the text before the parser recurses on it.
fn check_size(limits: &Limits, source: &str) -> Result<(), String> {
    let length = source.len() as u64;
    if length > limits.max_expression_length {
        return Err(limits::exceeded_message(
            &format!("the expression is {length} bytes long"),
            limits::MAX_EXPRESSION_LENGTH,
            limits.max_expression_length,
        ));
    }
    let depth = super::super::depth::nesting_depth(source) as u64;
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
    Ok(())
}

fn parse(env: &Env, source: &str) -> Result<Program, String> {
    env.compile(source)
        .map_err(|errors| match errors.errors.first() {
            Some(e) => format!(
                "syntax error at line {}, column {}: {} in {}",
                e.pos.0,
                e.pos.1 + 1,
                e.msg,
                quoted(source)
            ),
            None => format!("syntax error in {}", quoted(source)),
        })
}

/// Walks the syntax tree; the first problem found is the error.
fn analyse<'a>(
    scope: &'a Scope<'a>,
    field: Field,
    source: &str,
    program: &Program,
) -> Result<Analysis<'a>, String> {
    let mut analysis = Analysis::new(
        scope.known,
        scope.cluster_fields,
        scope.live_fields,
        scope.budgets,
        field,
    );
    analysis.walk(program.expression());
    let Some((id, problem)) = analysis.problems.first() else {
        return Ok(analysis);
    };
    let position = program
        .source_info()
        .offset_for(*id)
        // A field selection is recorded at its '.': point at the field name.
        .map(|(start, _)| {
            let start = start as usize;
            let at_dot = source.as_bytes().get(start) == Some(&b'.');
            column_of(source, start + usize::from(at_dot))
        })
        .map(|(line, column)| format!(" at line {line}, column {column}"))
        .unwrap_or_default();
    Err(format!("{problem}{position} in {}", quoted(source)))
}

fn merge(needs: &mut AttributeNeeds, more: AttributeNeeds) {
    needs.attributes.extend(more.attributes);
    needs.budgets.extend(more.budgets);
    match more.headers {
        Some(HeaderNeeds::All) => needs.add_all_headers(),
        Some(HeaderNeeds::Named(names)) => {
            for name in names {
                needs.add_header(&name);
            }
        }
        None => {}
    }
}
