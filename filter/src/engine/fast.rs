//! Fast paths for the `when` conditions policies write most: header and
//! request-attribute string tests combined with `&&`, `||` and `!`, such as
//!
//! ```text
//! request.headers[?'x-user-region'].orValue('') == 'eu'
//! !('x-tenant' in request.headers)
//! request.headers[?'x-model'].orValue('').startsWith('gpt-') && request.url_path.startsWith('/v1/')
//! ```
//!
//! They are recognised in the AST at load and evaluated directly on the
//! request's attribute values, without the CEL interpreter. A fast path only
//! ever answers when the interpreter could not answer otherwise: wherever
//! the interpreter would raise an error (a missing attribute, a missing
//! header read without `[?…]`), it answers "unknown" and the interpreter
//! decides, errors and all. Tests hold the two to the same results.

use std::collections::HashMap;

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use cel::objects::{AsKeyRef, Key, KeyRef};
use cel::Value;

use super::attributes::{catalog_index, root_index, Attributes, Kind, CATALOG};

/// A condition evaluated without the interpreter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fast {
    Literal(bool),
    /// `'name' in request.headers`
    HeaderPresent(String),
    Not(Box<Fast>),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    /// A string operand tested against a string literal.
    Test {
        operand: Operand,
        op: StringOp,
        literal: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    /// `request.headers[?'name'].orValue('default')`
    HeaderOr { name: String, default: String },
    /// `request.headers['name']`: unknown when the header is absent.
    Header(String),
    /// A string attribute such as `request.url_path`: unknown when absent.
    Attribute { root: usize, field: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum StringOp {
    Equals,
    NotEquals,
    StartsWith,
    EndsWith,
    Contains,
}

impl Fast {
    /// Recognises a fast path in a `when` expression, if it has one.
    pub(crate) fn recognise(e: &IdedExpr) -> Option<Fast> {
        match &e.expr {
            Expr::Literal(LiteralValue::Boolean(b)) => Some(Fast::Literal(*b.inner())),
            Expr::Call(call) => {
                let args = &call.args;
                match (call.func_name.as_str(), call.target.as_deref(), args.len()) {
                    (operators::LOGICAL_NOT, None, 1) => {
                        Some(Fast::Not(Box::new(Fast::recognise(&args[0])?)))
                    }
                    (operators::LOGICAL_AND, None, 2) => Some(Fast::And(
                        Box::new(Fast::recognise(&args[0])?),
                        Box::new(Fast::recognise(&args[1])?),
                    )),
                    (operators::LOGICAL_OR, None, 2) => Some(Fast::Or(
                        Box::new(Fast::recognise(&args[0])?),
                        Box::new(Fast::recognise(&args[1])?),
                    )),
                    (operators::IN, None, 2) if is_headers(&args[1]) => {
                        Some(Fast::HeaderPresent(string_literal(&args[0])?.to_string()))
                    }
                    (operators::EQUALS | operators::NOT_EQUALS, None, 2) => {
                        let op = if call.func_name == operators::EQUALS {
                            StringOp::Equals
                        } else {
                            StringOp::NotEquals
                        };
                        let (operand, literal) = match string_literal(&args[1]) {
                            Some(literal) => (operand(&args[0])?, literal),
                            None => (operand(&args[1])?, string_literal(&args[0])?),
                        };
                        Some(Fast::Test {
                            operand,
                            op,
                            literal: literal.to_string(),
                        })
                    }
                    ("startsWith" | "endsWith" | "contains", Some(target), 1) => {
                        let op = match call.func_name.as_str() {
                            "startsWith" => StringOp::StartsWith,
                            "endsWith" => StringOp::EndsWith,
                            _ => StringOp::Contains,
                        };
                        Some(Fast::Test {
                            operand: operand(target)?,
                            op,
                            literal: string_literal(&args[0])?.to_string(),
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The condition's value, or `None` where only the interpreter can say
    /// (it would raise an error, or the attribute is not a string).
    pub(crate) fn eval(&self, attributes: &Attributes) -> Option<bool> {
        match self {
            Fast::Literal(b) => Some(*b),
            Fast::HeaderPresent(name) => Some(get(headers(attributes)?, name).is_some()),
            Fast::Not(inner) => inner.eval(attributes).map(|b| !b),
            // CEL's && and || are commutative over errors: a false (true)
            // side decides whatever the other side does.
            Fast::And(a, b) => match (a.eval(attributes), b.eval(attributes)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Fast::Or(a, b) => match (a.eval(attributes), b.eval(attributes)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Fast::Test {
                operand,
                op,
                literal,
            } => {
                let value = operand.value(attributes)?;
                Some(match op {
                    StringOp::Equals => value == literal,
                    StringOp::NotEquals => value != literal,
                    StringOp::StartsWith => value.starts_with(literal.as_str()),
                    StringOp::EndsWith => value.ends_with(literal.as_str()),
                    StringOp::Contains => value.contains(literal.as_str()),
                })
            }
        }
    }
}

impl Operand {
    fn value<'a>(&'a self, attributes: &'a Attributes) -> Option<&'a str> {
        match self {
            Operand::HeaderOr { name, default } => match get(headers(attributes)?, name) {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => None,
                None => Some(default.as_str()),
            },
            Operand::Header(name) => match get(headers(attributes)?, name)? {
                Value::String(s) => Some(s.as_str()),
                _ => None,
            },
            Operand::Attribute { root, field } => {
                match get(map(attributes.roots.get(*root)?)?, field)? {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                }
            }
        }
    }
}

/// Looks a string key up without allocating a `Key`.
fn get<'m>(map: &'m HashMap<Key, Value>, name: &str) -> Option<&'m Value> {
    let key = KeyRef::String(name);
    map.get(&key as &dyn AsKeyRef)
}

fn map(value: &Value) -> Option<&HashMap<Key, Value>> {
    match value {
        Value::Map(m) => Some(&m.map),
        _ => None,
    }
}

fn headers(attributes: &Attributes) -> Option<&HashMap<Key, Value>> {
    let request = map(attributes.roots.get(root_index("request")?)?)?;
    map(get(request, "headers")?)
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// `request.headers`, by shape: a caller inside comprehensions also checks
/// that `request` is not a bound variable there.
pub(crate) fn is_headers(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Select(s) if !s.test && s.field == "headers"
        && matches!(&s.operand.expr, Expr::Ident(root) if root == "request"))
}

fn operand(e: &IdedExpr) -> Option<Operand> {
    match &e.expr {
        // request.headers[?'name'].orValue('default')
        Expr::Call(call)
            if call.func_name == "orValue" && call.args.len() == 1 && call.target.is_some() =>
        {
            let default = string_literal(&call.args[0])?.to_string();
            let Expr::Call(index) = &call.target.as_deref()?.expr else {
                return None;
            };
            if index.func_name != operators::OPT_INDEX
                || index.target.is_some()
                || index.args.len() != 2
                || !is_headers(&index.args[0])
            {
                return None;
            }
            Some(Operand::HeaderOr {
                name: string_literal(&index.args[1])?.to_string(),
                default,
            })
        }
        // request.headers['name']
        Expr::Call(call)
            if call.func_name == operators::INDEX
                && call.target.is_none()
                && call.args.len() == 2
                && is_headers(&call.args[0]) =>
        {
            Some(Operand::Header(string_literal(&call.args[1])?.to_string()))
        }
        // request.url_path and the other string attributes
        Expr::Select(select) if !select.test => {
            let Expr::Ident(root) = &select.operand.expr else {
                return None;
            };
            let i = catalog_index(root, &select.field)?;
            let (_, field, kind) = CATALOG[i];
            (kind == Kind::String).then_some(Operand::Attribute {
                root: root_index(root)?,
                field,
            })
        }
        _ => None,
    }
}
