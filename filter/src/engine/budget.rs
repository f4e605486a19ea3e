//! The evaluation budget: a bound on what one decision (or the load-time
//! precomputation) may spend, enforced while expressions run.
//!
//! The estimate made at load (`cost.rs`) rests on assumed request sizes; the
//! budget holds whatever the request is. Each expression is instrumented once,
//! at load: a comprehension charges its iterations times the nodes of its body
//! before its first iteration, and every function that builds a string or list
//! charges what it built. When the budget runs out the evaluation ends in an
//! error, which the decision treats as any other evaluation error: fail closed.

use std::cell::Cell;

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelInt, DYN_TYPE, INT_TYPE};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError};

use super::cost::{appends_to, BUILDERS, BYTES_PER_UNIT};

/// Wraps a comprehension's range: `@celroute_iterate(range, nodes)`.
const ITERATE: &str = "@celroute_iterate";
/// Wraps a call that builds a value: `@celroute_built(call)`.
const BUILT: &str = "@celroute_built";

thread_local! {
    /// Units left to the evaluation under way, and the budget it started with.
    static BUDGET: Cell<(u64, u64)> = const { Cell::new((u64::MAX, u64::MAX)) };
}

/// Starts a budget of `units` for the evaluations that follow on this thread.
pub(crate) fn start(units: u64) {
    BUDGET.with(|b| b.set((units, units)));
}

/// Whether the budget started last has run out.
pub(crate) fn exhausted() -> bool {
    BUDGET.with(|b| b.get().0 == 0)
}

fn charge(units: u64) -> Result<(), ExecutionError> {
    BUDGET.with(|b| {
        let (left, total) = b.get();
        if units > left {
            b.set((0, total));
            Err(ExecutionError::function_error(
                "evaluation budget",
                format!(
                    "exceeded the evaluation budget of {total} (options.limits.evaluation_budget)"
                ),
            ))
        } else {
            b.set((left - units, total));
            Ok(())
        }
    })
}

/// Adds the budget's functions to the policy environment.
pub(crate) fn register(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_overload(
        ITERATE,
        "celroute_iterate",
        vec![DYN_TYPE, INT_TYPE],
        iterate,
    )?;
    env.add_overload(BUILT, "celroute_built", vec![DYN_TYPE], built)
}

fn size_of(value: &CowVal<'_, '_>) -> u64 {
    value
        .as_sizer()
        .map(|s| u64::try_from(*s.size().inner()).unwrap_or(0))
        .unwrap_or(0)
}

fn is_text(value: &CowVal<'_, '_>) -> bool {
    matches!(value.get_type().name(), "string" | "bytes")
}

/// `@celroute_iterate(range, nodes)`: charges `size(range) * nodes`, yields `range`.
fn iterate<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut args = args.into_iter();
    let (Some(range), Some(nodes)) = (args.next(), args.next()) else {
        return Err(ExecutionError::function_error(
            ITERATE,
            "takes two arguments",
        ));
    };
    let nodes = nodes
        .downcast_ref::<CelInt>()
        .map(|n| u64::try_from(*n.inner()).unwrap_or(1))
        .unwrap_or(1);
    let iterations = if is_text(&range) { 0 } else { size_of(&range) };
    charge(iterations.saturating_mul(nodes).saturating_add(1))?;
    Ok(range)
}

/// `@celroute_built(value)`: charges the size of a value just built, yields it.
fn built<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let Some(value) = args.into_iter().next() else {
        return Err(ExecutionError::function_error(BUILT, "takes one argument"));
    };
    let size = size_of(&value);
    charge(if is_text(&value) {
        size / BYTES_PER_UNIT
    } else {
        size
    })?;
    Ok(value)
}

/// The expression as it runs: a copy of `expr` that charges the budget.
pub(crate) fn instrument(expr: &IdedExpr) -> IdedExpr {
    let mut copy = expr.clone();
    Instrument {
        accumulators: Vec::new(),
    }
    .walk(&mut copy);
    copy
}

struct Instrument {
    /// Accumulator names of the enclosing comprehensions.
    accumulators: Vec<String>,
}

impl Instrument {
    fn walk(&mut self, e: &mut IdedExpr) {
        match &mut e.expr {
            Expr::Select(select) => self.walk(&mut select.operand),
            Expr::Call(call) => {
                if let Some(target) = &mut call.target {
                    self.walk(target);
                }
                for arg in &mut call.args {
                    self.walk(arg);
                }
                if BUILDERS.contains(&call.func_name.as_str())
                    && !appends_to(call, self.accumulators.last())
                {
                    let inner = std::mem::take(e);
                    *e = wrap(BUILT, vec![inner]);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&mut c.iter_range);
                self.walk(&mut c.accu_init);
                self.accumulators.push(c.accu_var.clone());
                self.walk(&mut c.loop_cond);
                self.walk(&mut c.loop_step);
                self.walk(&mut c.result);
                self.accumulators.pop();
                let nodes = nodes(&c.loop_cond).saturating_add(nodes(&c.loop_step));
                let range = std::mem::take(&mut c.iter_range);
                let nodes = IdedExpr {
                    id: 0,
                    expr: Expr::Literal(LiteralValue::Int(
                        i64::try_from(nodes).unwrap_or(i64::MAX).into(),
                    )),
                };
                c.iter_range = wrap(ITERATE, vec![range, nodes]);
            }
            Expr::List(list) => list.elements.iter_mut().for_each(|x| self.walk(x)),
            Expr::Map(map) => {
                for entry in &mut map.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(m) => {
                            self.walk(&mut m.key);
                            self.walk(&mut m.value);
                        }
                        EntryExpr::StructField(f) => self.walk(&mut f.value),
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &mut s.entries {
                    match &mut entry.expr {
                        EntryExpr::StructField(f) => self.walk(&mut f.value),
                        EntryExpr::MapEntry(m) => self.walk(&mut m.value),
                    }
                }
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

fn wrap(function: &str, args: Vec<IdedExpr>) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Call(CallExpr {
            func_name: function.to_string(),
            target: None,
            args,
        }),
    }
}

/// How many nodes an expression has.
fn nodes(e: &IdedExpr) -> u64 {
    let children: u64 = match &e.expr {
        Expr::Select(select) => nodes(&select.operand),
        Expr::Call(call) => {
            call.target.iter().map(|t| nodes(t)).sum::<u64>()
                + call.args.iter().map(nodes).sum::<u64>()
        }
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .map(nodes)
        .sum(),
        Expr::List(list) => list.elements.iter().map(nodes).sum(),
        Expr::Map(map) => map
            .entries
            .iter()
            .map(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => nodes(&m.key) + nodes(&m.value),
                EntryExpr::StructField(f) => nodes(&f.value),
            })
            .sum(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .map(|entry| match &entry.expr {
                EntryExpr::StructField(f) => nodes(&f.value),
                EntryExpr::MapEntry(m) => nodes(&m.value),
            })
            .sum(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => 0,
    };
    children.saturating_add(1)
}
