//! What an expression reads, and what would make it fail on every request:
//! a walk over its syntax tree at load that records the attributes it
//! references (the only ones fetched per request) and reports unknown
//! functions, variables, attributes and cluster fields with their position.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::common::ast::{
    operators, CallExpr, ComprehensionExpr, EntryExpr, Expr, IdedExpr, LiteralValue, SelectExpr,
};
use cel::{Context, Env};

use super::attributes::{catalog_index, fields_of, AttributeNeeds, ROOTS};
use super::error::did_you_mean;
use super::live::{LiveFields, LIVE};

/// Where an expression stands in a rule: what it may read depends on it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    When,
    Require,
    OrderBy,
    /// A `split` rule's weight, per candidate.
    Split,
    /// A `split` rule's stickiness key: one per request, like a `when`.
    StickyBy,
}

impl Field {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::When => "when",
            Field::Require => "require",
            Field::OrderBy => "order_by",
            Field::Split => "split",
            Field::StickyBy => "sticky_by",
        }
    }

    /// An expression evaluated once per request, where `cluster` means nothing.
    pub(crate) fn per_request(self) -> bool {
        matches!(self, Field::When | Field::StickyBy)
    }
}

/// The CEL environment policies are compiled and run in: the standard
/// library with the strings and math extensions.
pub(crate) fn policy_env() -> Env {
    let mut env = Env::stdlib();
    // Registering a fixed, known set of extensions into a fresh Env cannot
    // conflict; should a future cel release change that, the functions are
    // simply missing and policies that use them fail to load with a clear error.
    let _ = env.add_extension(cel::extensions::strings);
    let _ = env.add_extension(cel::extensions::math);
    let _ = super::budget::register(&mut env);
    env
}

/// Answers whether a function name is declared in the policy environment.
pub(crate) struct FunctionCatalog {
    env: Arc<Env>,
}

impl FunctionCatalog {
    pub(crate) fn new(env: &Arc<Env>) -> FunctionCatalog {
        FunctionCatalog { env: env.clone() }
    }

    pub(crate) fn knows(&self, name: &str) -> bool {
        // cel refuses to add a context function whose name the Env already
        // declares: that refusal is how a declared name is recognised.
        let mut context = Context::with_env(self.env.clone());
        context.add_function(name, || true).is_err()
    }

    /// Why `zone` is not a time zone the timestamp functions accept, or
    /// `None` when it is: cel itself is asked, on a fixed timestamp.
    pub(crate) fn time_zone_error(&self, zone: &str) -> Option<String> {
        let program = self
            .env
            .compile("timestamp('2000-01-01T00:00:00Z').getHours(zone)")
            .ok()?;
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value("zone", zone.to_string());
        program.execute(&context).err().map(|e| e.to_string())
    }
}

/// The timestamp functions that take a time zone as their argument.
const TIME_ZONE_FUNCTIONS: [&str; 10] = [
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn column_of(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Names CEL accepts as type identifiers (`type(x) == string`).
const TYPE_NAMES: [&str; 11] = [
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// Walks one expression's AST: records the attributes it reads and the
/// problems that would make it fail on every request.
pub(crate) struct Analysis<'a> {
    known: &'a FunctionCatalog,
    cluster_fields: &'a BTreeSet<String>,
    live_fields: &'a LiveFields,
    /// The policy's budgets: name and limit.
    budgets: &'a [(String, f64)],
    field: Field,
    /// The request attributes it reads.
    pub(crate) needs: AttributeNeeds,
    /// Whether it may read live cluster state: `cluster.live`, any `.live`
    /// selection, or a whole cluster value (`cluster` or `clusters` used as
    /// a value). Never set when no live field exists.
    pub(crate) reads_live: bool,
    /// The live fields it names; `None` once it may read any (a whole
    /// `cluster.live` or cluster value).
    pub(crate) live_names: Option<BTreeSet<String>>,
    pub(crate) problems: Vec<(u64, String)>,
    /// Variables bound by enclosing comprehensions (`exists(h, ...)`).
    scopes: Vec<String>,
}

impl<'a> Analysis<'a> {
    pub(crate) fn new(
        known: &'a FunctionCatalog,
        cluster_fields: &'a BTreeSet<String>,
        live_fields: &'a LiveFields,
        budgets: &'a [(String, f64)],
        field: Field,
    ) -> Analysis<'a> {
        Analysis {
            known,
            cluster_fields,
            live_fields,
            budgets,
            field,
            needs: AttributeNeeds::default(),
            reads_live: false,
            live_names: Some(BTreeSet::new()),
            problems: Vec::new(),
            scopes: Vec::new(),
        }
    }

    /// `cluster.live`, unshadowed, in a build with live fields.
    fn is_cluster_live(&self, e: &IdedExpr) -> bool {
        match &e.expr {
            Expr::Select(s) => {
                s.field == LIVE
                    && !self.live_fields.is_empty()
                    && matches!(&s.operand.expr, Expr::Ident(root) if root == "cluster" && !self.bound(root))
            }
            _ => false,
        }
    }

    /// `cluster.live.<field>`: a known live field, or the problem.
    fn live_field(&mut self, id: u64, field: &str) {
        self.cluster_available(id);
        self.reads_live = true;
        if let Some(names) = &mut self.live_names {
            names.insert(field.to_string());
        }
        if !self.live_fields.contains(field) {
            let hint = did_you_mean(field, self.live_fields.names())
                .map(|c| format!(" (did you mean '{c}'?)"))
                .unwrap_or_else(|| {
                    let names: Vec<_> = self.live_fields.names().collect();
                    format!(" (live fields: {})", names.join(", "))
                });
            self.problem(
                id,
                format!("unknown live field 'cluster.live.{field}'{hint}"),
            );
        }
    }

    /// `cluster.<field>`: an inventory attribute, `live`, or the problem.
    fn cluster_field(&mut self, id: u64, field: &str) {
        self.cluster_available(id);
        if field == LIVE && !self.live_fields.is_empty() {
            self.reads_live = true;
            self.live_names = None;
            return;
        }
        if !self.cluster_fields.contains(field) {
            let hint = did_you_mean(field, self.cluster_fields.iter().map(String::as_str))
                .map(|c| format!(" (did you mean '{c}'?)"))
                .unwrap_or_default();
            let message =
                format!("no cluster in the inventory has the attribute 'cluster.{field}'{hint}");
            self.problem(id, message);
        }
    }

    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }

    fn problem(&mut self, id: u64, message: String) {
        self.problems.push((id, message));
    }

    /// `budget.<name>`, unshadowed: the name.
    fn budget_name<'e>(&self, e: &'e IdedExpr) -> Option<&'e str> {
        match &e.expr {
            Expr::Select(s)
                if !s.test
                    && matches!(&s.operand.expr, Expr::Ident(b) if b == BUDGET)
                    && !self.bound(BUDGET) =>
            {
                Some(s.field.as_str())
            }
            _ => None,
        }
    }

    /// `budget.<name>` (or the whole `budget` when `name` is `None`): a
    /// declared budget, read per request.
    fn budget(&mut self, id: u64, name: Option<&str>) {
        let budgets = self.budgets;
        match name {
            None => self.needs.budgets.extend(budgets.iter().cloned()),
            Some(name) => match budgets.iter().find(|(n, _)| n == name) {
                Some((n, limit)) => {
                    self.needs.budgets.insert(n.clone(), *limit);
                }
                None => {
                    let hint = did_you_mean(name, budgets.iter().map(|(n, _)| n.as_str()))
                        .map(|c| format!(" (did you mean 'budget.{c}'?)"))
                        .unwrap_or_else(|| {
                            if budgets.is_empty() {
                                " (the policy declares no budgets:)".to_string()
                            } else {
                                String::new()
                            }
                        });
                    self.problem(id, format!("unknown budget 'budget.{name}'{hint}"));
                }
            },
        }
    }

    /// `request.body`, unshadowed.
    fn is_body(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Select(s) if !s.test && s.field == "body"
            && matches!(&s.operand.expr, Expr::Ident(r) if r == "request"))
            && !self.bound("request")
    }

    /// `request.body.<field>`: one of the fields celroute extracts.
    fn body_field(&mut self, id: u64, field: &str) {
        if !super::body::BODY_FIELDS.contains(&field) {
            let hint = did_you_mean(field, super::body::BODY_FIELDS.iter().copied())
                .map(|c| format!(" (did you mean 'request.body.{c}'?)"))
                .unwrap_or_default();
            self.problem(
                id,
                format!(
                    "unknown body field 'request.body.{field}'{hint}; the body fields are {}",
                    super::body::BODY_FIELDS.join(", ")
                ),
            );
            return;
        }
        self.attribute(id, "request", "body");
    }

    /// `request.headers`, unshadowed.
    fn is_headers(&self, e: &IdedExpr) -> bool {
        super::fast::is_headers(e) && !self.bound("request")
    }

    fn header_key(&mut self, id: u64, key: &IdedExpr) -> bool {
        if let Expr::Literal(LiteralValue::String(name)) = &key.expr {
            let name = name.inner();
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                self.problem(
                    id,
                    format!(
                        "header names are lower-case in request.headers: use '{}'",
                        name.to_ascii_lowercase()
                    ),
                );
            } else {
                self.needs.add_header(name);
            }
            return true;
        }
        false
    }

    pub(crate) fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => self.ident(e.id, name),
            Expr::Select(select) => self.select(e.id, select),
            Expr::Call(call) => self.call(e.id, call),
            Expr::Comprehension(c) => self.comprehension(c),
            Expr::List(list) => list.elements.iter().for_each(|x| self.walk(x)),
            Expr::Map(map) => {
                for entry in &map.entries {
                    if let EntryExpr::MapEntry(m) = &entry.expr {
                        self.walk(&m.key);
                        self.walk(&m.value);
                    }
                }
            }
            Expr::Struct(s) => {
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        self.walk(&f.value);
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn select(&mut self, id: u64, select: &SelectExpr) {
        if self.is_headers(&select.operand) {
            // request.headers.name, has(request.headers.name)
            self.needs.add_header(&select.field);
            return;
        }
        if self.is_cluster_live(&select.operand) {
            return self.live_field(id, &select.field);
        }
        if self.is_body(&select.operand) {
            return self.body_field(id, &select.field);
        }
        if let Some(name) = self.budget_name(&select.operand) {
            // budget.<name>.<field>
            if !super::spending::BUDGET_FIELDS.contains(&select.field.as_str()) {
                let hint = did_you_mean(
                    &select.field,
                    super::spending::BUDGET_FIELDS.iter().copied(),
                )
                .map(|c| format!(" (did you mean '{c}'?)"))
                .unwrap_or_default();
                self.problem(
                    id,
                    format!(
                        "unknown budget field 'budget.{name}.{}'{hint}; the fields are {}",
                        select.field,
                        super::spending::BUDGET_FIELDS.join(", ")
                    ),
                );
            }
            return self.walk(&select.operand);
        }
        if matches!(&select.operand.expr, Expr::Ident(b) if b == BUDGET && !self.bound(b)) {
            return self.budget(id, Some(&select.field));
        }
        if let Expr::Ident(root) = &select.operand.expr {
            if !self.bound(root) {
                if ROOTS.contains(&root.as_str()) {
                    return self.attribute(id, root, &select.field);
                }
                if root == "cluster" {
                    return self.cluster_field(id, &select.field);
                }
            }
        }
        if select.field == LIVE && !self.live_fields.is_empty() {
            // `clusters['aws'].live`, `c.live` in a comprehension
            self.reads_live = true;
            self.live_names = None;
        }
        self.walk(&select.operand);
    }

    fn call(&mut self, id: u64, call: &CallExpr) {
        let name = call.func_name.as_str();
        if (name == operators::INDEX || name == operators::OPT_INDEX)
            && call.args.len() == 2
            && self.is_headers(&call.args[0])
        {
            return self.header_lookup(id, &call.args[1]);
        }
        if name == operators::IN && call.args.len() == 2 && self.is_headers(&call.args[1]) {
            return self.header_lookup(id, &call.args[0]);
        }
        if name == operators::OPT_SELECT && call.args.len() == 2 && self.is_body(&call.args[0]) {
            // request.body.?field
            if let Expr::Literal(LiteralValue::String(field)) = &call.args[1].expr {
                return self.body_field(id, field.inner());
            }
        }
        if name == "matches" {
            // `s.matches(re)` or `matches(s, re)`
            let pattern = if call.target.is_some() {
                call.args.first()
            } else {
                call.args.get(1)
            };
            self.regex(id, pattern);
        }
        if call.target.is_some() && TIME_ZONE_FUNCTIONS.contains(&name) {
            // `t.getHours('Europe/Paris')`: a zone written as a literal must
            // be one compiled in, else every evaluation would fail.
            if let [IdedExpr {
                expr: Expr::Literal(LiteralValue::String(zone)),
                ..
            }] = call.args.as_slice()
            {
                if let Some(reason) = self.known.time_zone_error(zone.inner()) {
                    self.problem(
                        id,
                        format!(
                            "'{}' is not a time zone celroute knows ({reason}); the zones compiled in are listed in docs/policy-reference.md",
                            zone.inner()
                        ),
                    );
                }
            }
        }
        let is_operator = name.starts_with('_')
            || name.starts_with('@')
            || name.starts_with('!')
            || name.starts_with('-');
        let mut walk_target = true;
        if !is_operator {
            let qualified = call
                .target
                .as_deref()
                .and_then(|t| self.namespace(t))
                .map(|ns| format!("{ns}.{name}"));
            match qualified {
                Some(q) if self.known.knows(&q) => walk_target = false,
                _ if self.known.knows(name) => {}
                Some(q) => {
                    self.problem(id, format!("unknown function '{q}'"));
                    walk_target = false;
                }
                None => self.problem(id, format!("unknown function '{name}'")),
            }
        }
        if walk_target {
            if let Some(target) = &call.target {
                self.walk(target);
            }
        }
        for arg in &call.args {
            self.walk(arg);
        }
    }

    /// A literal `matches()` pattern is compiled here, as the interpreter
    /// would compile it on every evaluation: an invalid one (or one over the
    /// regex engine's size limit) would fail every request.
    fn regex(&mut self, id: u64, pattern: Option<&IdedExpr>) {
        let Some(IdedExpr {
            expr: Expr::Literal(LiteralValue::String(pattern)),
            ..
        }) = pattern
        else {
            return;
        };
        if let Err(reason) = regex_lite::Regex::new(pattern.inner()) {
            self.problem(
                id,
                format!(
                    "'{}' is not a valid regular expression: {reason}",
                    pattern.inner()
                ),
            );
        }
    }

    /// `request.headers[key]` or `key in request.headers`: one header when
    /// the key is a literal, else the whole map.
    fn header_lookup(&mut self, id: u64, key: &IdedExpr) {
        if !self.header_key(id, key) {
            self.needs.add_all_headers();
            self.walk(key);
        }
    }

    fn comprehension(&mut self, c: &ComprehensionExpr) {
        self.walk(&c.iter_range);
        self.walk(&c.accu_init);
        let depth = self.scopes.len();
        self.scopes.push(c.iter_var.clone());
        if let Some(v) = &c.iter_var2 {
            self.scopes.push(v.clone());
        }
        self.scopes.push(c.accu_var.clone());
        self.walk(&c.loop_cond);
        self.walk(&c.loop_step);
        self.walk(&c.result);
        self.scopes.truncate(depth);
    }

    /// A qualified name that is not a variable (`math` in `math.greatest(...)`).
    fn namespace(&self, target: &IdedExpr) -> Option<String> {
        match &target.expr {
            Expr::Ident(name) if !self.bound(name) && !is_variable(name) => Some(name.clone()),
            Expr::Select(s) if !s.test => self
                .namespace(&s.operand)
                .map(|ns| format!("{ns}.{}", s.field)),
            _ => None,
        }
    }

    fn ident(&mut self, id: u64, name: &str) {
        if self.bound(name) || TYPE_NAMES.contains(&name) {
            return;
        }
        if name == "clusters" || name == "cluster" {
            // A whole cluster value (or all of them) carries its live state;
            // never fetched from the request.
            if !self.live_fields.is_empty() {
                self.reads_live = true;
                self.live_names = None;
            }
        }
        if name == "clusters" {
            return;
        }
        if ROOTS.contains(&name) {
            // The whole root is used as a value: fetch all of it.
            for field in fields_of(name) {
                if field == "headers" {
                    self.needs.add_all_headers();
                } else if let Some(i) = catalog_index(name, field) {
                    self.needs.add(i);
                }
            }
            return;
        }
        if name == "cluster" {
            self.cluster_available(id);
            return;
        }
        if name == BUDGET {
            // The whole `budget` map (iterated, or indexed by a computed name).
            return self.budget(id, None);
        }
        let variables = ROOTS.iter().copied().chain(["cluster", "clusters", BUDGET]);
        let hint = did_you_mean(name, variables)
            .map(|c| format!(" (did you mean '{c}'?)"))
            .unwrap_or_default();
        self.problem(id, format!("undeclared reference to '{name}'{hint}"));
    }

    fn cluster_available(&mut self, id: u64) {
        if self.field.per_request() {
            self.problem(
                id,
                "'cluster' is the candidate being judged: it exists in require and order_by, not in when (use clusters['name'] here)".to_string(),
            );
        }
    }

    fn attribute(&mut self, id: u64, root: &str, field: &str) {
        match catalog_index(root, field) {
            Some(i) => {
                if field == "headers" {
                    self.needs.add_all_headers();
                } else {
                    self.needs.add(i);
                }
            }
            None => {
                let hint = did_you_mean(field, fields_of(root))
                    .map(|c| format!(" (did you mean '{root}.{c}'?)"))
                    .unwrap_or_default();
                self.problem(id, format!("unknown attribute '{root}.{field}'{hint}"));
            }
        }
    }
}

fn is_variable(name: &str) -> bool {
    ROOTS.contains(&name) || name == "cluster" || name == "clusters" || name == BUDGET
}

/// The variable holding the policy's spend budgets.
const BUDGET: &str = "budget";
