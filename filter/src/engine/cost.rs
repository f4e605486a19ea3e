//! What an expression may cost, known before it runs: [`estimate`] walks the
//! parsed syntax tree and gives an upper bound of its cost, in the units of
//! the run-time budget (see `budget.rs`): one per node evaluated (once per
//! iteration inside a comprehension), one per list element or map entry a
//! function builds, one per 64 bytes of string it builds. Sizes come from the
//! inventory, which is known, and for request values from documented bounds
//! ([`REQUEST_VALUE_BYTES`], [`REQUEST_HEADERS`]). How deeply an expression
//! nests is measured apart, on its text (`depth.rs`).

use std::collections::HashMap;

use cel::common::ast::{operators, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::Value;

/// Bytes the estimate assumes for any request value (a header, a path).
/// A larger request is still bounded at run time by the evaluation budget.
pub const REQUEST_VALUE_BYTES: u64 = 8_192;
/// Headers the estimate assumes a request has (Envoy's default
/// `max_request_headers_count` is 100).
pub const REQUEST_HEADERS: u64 = 100;
/// Bytes of built string that cost one unit.
pub const BYTES_PER_UNIT: u64 = 64;

/// An upper bound of a value's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bound {
    /// Elements of the value itself, when it is a list or map.
    pub count: u64,
    /// Elements of any list or map inside it.
    pub nested: u64,
    /// Bytes of any string or bytes in it, itself included.
    pub bytes: u64,
}

impl Bound {
    /// The larger of two bounds, in each dimension.
    pub fn max(self, other: Bound) -> Bound {
        Bound {
            count: self.count.max(other.count),
            nested: self.nested.max(other.nested),
            bytes: self.bytes.max(other.bytes),
        }
    }

    pub(crate) fn string(bytes: u64) -> Bound {
        Bound {
            bytes,
            ..Bound::default()
        }
    }

    /// A container of `count` elements, each within `element`.
    pub(crate) fn container(count: u64, element: Bound) -> Bound {
        Bound {
            count,
            nested: element.count.max(element.nested),
            bytes: element.bytes,
        }
    }

    /// The bound of any element (or key) of a value within this bound.
    fn element(self) -> Bound {
        Bound {
            count: self.nested,
            nested: self.nested,
            bytes: self.bytes,
        }
    }

    /// Units the budget charges for building a value of this size.
    fn built(self) -> u64 {
        self.count.saturating_add(self.bytes / BYTES_PER_UNIT)
    }

    /// The bound of a CEL value (inventory values, known at load).
    pub fn of(value: &Value) -> Bound {
        match value {
            Value::String(s) => Bound::string(s.len() as u64),
            Value::Bytes(b) => Bound::string(b.len() as u64),
            Value::List(items) => Bound::container(
                items.len() as u64,
                items
                    .iter()
                    .map(Bound::of)
                    .fold(Bound::default(), Bound::max),
            ),
            Value::Map(map) => Bound::container(
                map.map.len() as u64,
                map.map
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            cel::objects::Key::String(s) => Bound::string(s.len() as u64),
                            _ => Bound::default(),
                        };
                        key.max(Bound::of(v))
                    })
                    .fold(Bound::default(), Bound::max),
            ),
            _ => Bound::default(),
        }
    }
}

/// What the estimate knows of the inventory.
pub struct Inventory {
    /// `cluster.<field>`: the bound over every cluster that has the field.
    pub fields: HashMap<String, Bound>,
    /// Any one cluster's attribute map.
    pub cluster: Bound,
    /// The `clusters` map.
    pub clusters: Bound,
}

/// The worst-case cost of evaluating `expr` once, in budget units.
pub fn estimate(expr: &IdedExpr, inventory: &Inventory) -> u64 {
    let mut estimator = Estimator {
        inventory,
        scopes: Vec::new(),
        accumulators: Vec::new(),
    };
    estimator.expr(expr).cost
}

/// The cost of evaluating a node, and the size of what it yields.
#[derive(Clone, Copy, Default)]
struct Estimate {
    cost: u64,
    bound: Bound,
}

struct Estimator<'a> {
    inventory: &'a Inventory,
    /// Comprehension variables and their bounds, innermost last.
    scopes: Vec<(String, Bound)>,
    /// Accumulator names of the enclosing comprehensions.
    accumulators: Vec<String>,
}

/// `@result + [x]`, with `accumulator` the innermost comprehension's: the
/// step of a map or filter, which the interpreter recognises by this very
/// shape and runs as an append in place. Its cost is its iterations'.
pub(crate) fn appends_to(call: &cel::common::ast::CallExpr, accumulator: Option<&String>) -> bool {
    call.func_name == operators::ADD
        && matches!(call.args.first().map(|a| &a.expr),
            Some(Expr::Ident(n)) if accumulator == Some(n))
}

/// Functions that build a string or list whose size depends on their input.
pub(crate) const BUILDERS: [&str; 13] = [
    operators::ADD,
    "replace",
    "join",
    "split",
    "format",
    "lowerAscii",
    "upperAscii",
    "trim",
    "reverse",
    "substring",
    "strings.quote",
    "string",
    "bytes",
];

impl Estimator<'_> {
    fn expr(&mut self, e: &IdedExpr) -> Estimate {
        match &e.expr {
            Expr::Literal(literal) => Estimate {
                cost: 1,
                bound: match literal {
                    LiteralValue::String(s) => Bound::string(s.inner().len() as u64),
                    LiteralValue::Bytes(b) => Bound::string(b.inner().len() as u64),
                    _ => Bound::default(),
                },
            },
            Expr::Ident(name) => Estimate {
                cost: 1,
                bound: self.ident(name),
            },
            Expr::Select(select) => {
                let bound = match &select.operand.expr {
                    Expr::Ident(root) if !self.bound(root) => self.attribute(root, &select.field),
                    _ => None,
                };
                let operand = self.expr(&select.operand);
                Estimate {
                    cost: operand.cost.saturating_add(1),
                    bound: bound.unwrap_or(operand.bound.element()),
                }
            }
            Expr::Call(call) => self.call(call),
            Expr::List(list) => self.elements(list.elements.iter()),
            Expr::Map(map) => {
                self.elements(map.entries.iter().flat_map(|entry| match &entry.expr {
                    EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                    EntryExpr::StructField(f) => vec![&f.value],
                }))
            }
            Expr::Struct(s) => self.elements(s.entries.iter().map(|entry| match &entry.expr {
                EntryExpr::StructField(f) => &f.value,
                EntryExpr::MapEntry(m) => &m.value,
            })),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::Unspecified => Estimate::default(),
        }
    }

    /// A comprehension costs its range, then its condition and step once
    /// per element, then its result.
    fn comprehension(&mut self, c: &ComprehensionExpr) -> Estimate {
        let range = self.expr(&c.iter_range);
        let init = self.expr(&c.accu_init);
        let depth = self.scopes.len();
        self.scopes
            .push((c.iter_var.clone(), range.bound.element()));
        if let Some(v) = &c.iter_var2 {
            self.scopes.push((v.clone(), range.bound.element()));
        }
        let accu = Bound {
            count: init.bound.count.max(range.bound.count),
            ..init.bound
        };
        self.scopes.push((c.accu_var.clone(), accu));
        self.accumulators.push(c.accu_var.clone());
        let cond = self.expr(&c.loop_cond);
        let step = self.expr(&c.loop_step);
        let accu = accu.max(Bound {
            count: step
                .bound
                .count
                .min(range.bound.count.saturating_add(init.bound.count)),
            ..step.bound
        });
        if let Some(slot) = self.scopes.last_mut() {
            slot.1 = accu;
        }
        let result = self.expr(&c.result);
        self.accumulators.pop();
        self.scopes.truncate(depth);
        let iterations = range.bound.count.max(1);
        Estimate {
            cost: range
                .cost
                .saturating_add(init.cost)
                .saturating_add(iterations.saturating_mul(cond.cost.saturating_add(step.cost)))
                .saturating_add(result.cost),
            bound: result.bound,
        }
    }

    fn elements<'e>(&mut self, items: impl Iterator<Item = &'e IdedExpr>) -> Estimate {
        let mut cost: u64 = 1;
        let mut count: u64 = 0;
        let mut element = Bound::default();
        for item in items {
            let item = self.expr(item);
            cost = cost.saturating_add(item.cost).saturating_add(1);
            element = element.max(item.bound);
            count = count.saturating_add(1);
        }
        Estimate {
            cost,
            bound: Bound::container(count, element),
        }
    }

    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|(n, _)| n == name)
    }

    fn ident(&self, name: &str) -> Bound {
        if let Some((_, bound)) = self.scopes.iter().rev().find(|(n, _)| n == name) {
            return *bound;
        }
        match name {
            "cluster" => self.inventory.cluster,
            "clusters" => self.inventory.clusters,
            "request" | "source" | "destination" | "connection" => Bound {
                count: REQUEST_HEADERS,
                nested: REQUEST_HEADERS,
                bytes: REQUEST_VALUE_BYTES,
            },
            _ => Bound::default(),
        }
    }

    fn attribute(&self, root: &str, field: &str) -> Option<Bound> {
        match root {
            "cluster" => Some(
                self.inventory
                    .fields
                    .get(field)
                    .copied()
                    .unwrap_or_default(),
            ),
            "request" if field == "headers" => Some(Bound {
                count: REQUEST_HEADERS,
                nested: 0,
                bytes: REQUEST_VALUE_BYTES,
            }),
            "request" | "source" | "destination" | "connection" => {
                Some(Bound::string(REQUEST_VALUE_BYTES))
            }
            _ => None,
        }
    }

    fn call(&mut self, call: &cel::common::ast::CallExpr) -> Estimate {
        let name = call.func_name.as_str();
        let appends = appends_to(call, self.accumulators.last());
        let mut cost: u64 = 1;
        let mut args = Vec::with_capacity(call.args.len() + 1);
        for arg in call.target.iter().map(|t| t.as_ref()).chain(&call.args) {
            let estimate = self.expr(arg);
            cost = cost.saturating_add(estimate.cost);
            args.push(estimate.bound);
        }
        let arg = |i: usize| args.get(i).copied().unwrap_or_default();
        let joined = args.iter().copied().fold(Bound::default(), Bound::max);
        let bound = match name {
            _ if appends => Bound {
                count: arg(0).count.saturating_add(1),
                ..arg(0).max(arg(1))
            },
            operators::ADD => Bound {
                count: arg(0).count.saturating_add(arg(1).count),
                nested: arg(0).nested.max(arg(1).nested),
                bytes: arg(0).bytes.saturating_add(arg(1).bytes),
            },
            operators::INDEX | operators::OPT_INDEX => arg(0).element(),
            "replace" => Bound::string(
                arg(0)
                    .bytes
                    .saturating_add(1)
                    .saturating_mul(arg(2).bytes.saturating_add(1)),
            ),
            "join" => Bound::string(
                arg(0)
                    .count
                    .saturating_mul(arg(0).bytes.saturating_add(arg(1).bytes))
                    .max(arg(0).bytes),
            ),
            "split" => Bound {
                count: arg(0).bytes.saturating_add(1),
                nested: 0,
                bytes: arg(0).bytes,
            },
            "format" => Bound::string(
                arg(0)
                    .bytes
                    .saturating_add(arg(1).count.saturating_mul(arg(1).bytes.max(32))),
            ),
            "strings.quote" => Bound::string(arg(0).bytes.saturating_mul(2).saturating_add(2)),
            "string" | "bytes" => Bound::string(arg(0).bytes.max(32)),
            _ => joined,
        };
        if !appends && BUILDERS.contains(&name) {
            cost = cost.saturating_add(bound.built());
        }
        Estimate { cost, bound }
    }
}

#[cfg(test)]
mod estimates {
    use super::*;

    fn estimate_of(source: &str) -> u64 {
        let program = match cel::Env::stdlib().compile(source) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let inventory = Inventory {
            fields: HashMap::from([("x".to_string(), Bound::default())]),
            cluster: Bound::string(16),
            clusters: Bound::string(16),
        };
        estimate(program.expression(), &inventory)
    }

    /// The figures `docs/limits.md` quotes.
    #[test]
    fn estimates_quoted_in_the_documentation() {
        let small = estimate_of("[1,2,3].exists(x, x == cluster.x)");
        assert!((20..=50).contains(&small), "{small}");
        let split = estimate_of(
            "request.headers[?'x-models'].orValue('').split(',').exists(m, m == cluster.name)",
        );
        assert!((60_000..=100_000).contains(&split), "{split}");
        let list = format!(
            "[{}]",
            (0..100)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let cube = estimate_of(&format!(
            "{list}.all(a, {list}.all(b, {list}.all(c, a + b + c >= 0)))"
        ));
        assert!((5_000_000..=20_000_000).contains(&cube), "{cube}");
    }
}
