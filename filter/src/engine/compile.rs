//! Validation and compilation: a [`PolicyDocument`] becomes a [`Policy`] whose
//! CEL programs are compiled once, and whose referenced attributes are known,
//! so that per request nothing is parsed and only those attributes are fetched.
//!
//! Every check that can be made before traffic arrives is made here: unknown
//! fields, clusters, attributes, cluster fields, functions and variables are
//! load errors, so a bad policy never replaces a good one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map};
use cel::{Context, Env, Value};

use super::attributes::{catalog_index, fields_of, AttributeNeeds, ROOTS};
use super::cache::{CacheStats, DecisionCache};
use super::cost::{self, Bound};
use super::document::{PolicyDocument, RuleDocument};
use super::error::{did_you_mean, PolicyError, PolicyErrors};
use super::limits::{self, Limits};

/// Default request header that carries the chosen cluster to Envoy.
pub const DEFAULT_ROUTING_HEADER: &str = "x-celroute-cluster";
/// Default status when the constraints leave no cluster (451: Unavailable For Legal Reasons).
pub const DEFAULT_NO_CANDIDATE_STATUS: u16 = 451;
/// Largest `options.decision_cache_size` accepted.
pub const MAX_DECISION_CACHE_SIZE: usize = 100_000;

/// Names the engine uses for decisions no rule made; rules may not take them.
pub(crate) const RESERVED_RULE_NAMES: [&str; 3] = ["default", "first-candidate", "no-candidate"];

/// Log verbosity, set by the policy's `options.log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Off,
}

/// A validated policy with its CEL programs compiled.
pub struct Policy {
    pub(crate) name: Option<String>,
    pub(crate) env: Arc<Env>,
    pub(crate) clusters: Vec<Cluster>,
    /// `clusters` as CEL sees it: name -> attributes (converted once).
    pub(crate) clusters_value: Box<dyn cel::common::value::Val>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) default: Option<usize>,
    pub(crate) needs: AttributeNeeds,
    /// Which attribute roots to bind per request (those the policy reads).
    pub(crate) bound_roots: [bool; 4],
    pub(crate) routing_header: String,
    pub(crate) decision_header: Option<String>,
    pub(crate) log_level: LogLevel,
    pub(crate) no_candidate_status: u16,
    pub(crate) version: String,
    pub(crate) programs: usize,
    pub(crate) limits: Limits,
    /// Decisions by the values of the attributes read; `None` when off.
    pub(crate) cache: Option<DecisionCache>,
}

pub(crate) struct Cluster {
    pub(crate) name: String,
    /// The cluster's attributes plus `name`, as `cluster` in CEL, converted
    /// once here so that binding it per evaluation copies nothing.
    pub(crate) value: Box<dyn cel::common::value::Val>,
}

pub(crate) struct Rule {
    pub(crate) name: String,
    pub(crate) when: Option<Expression>,
    pub(crate) action: Action,
}

pub(crate) enum Action {
    Require(Expression),
    Deny { status: u16, message: String },
    Prefer(Vec<usize>),
    OrderBy { key: Expression, descending: bool },
}

/// A compiled CEL expression.
pub(crate) struct Expression {
    /// The program as it runs: instrumented to charge the evaluation budget.
    pub(crate) executable: cel::common::ast::IdedExpr,
    /// Worst-case cost of one evaluation, estimated at load.
    pub(crate) cost: u64,
    /// Reads no request attribute: its value depends only on the inventory.
    pub(crate) request_independent: bool,
    /// For a per-cluster expression (`require`, `order_by`) that reads no
    /// request attribute: its result for each cluster, evaluated once at load.
    pub(crate) per_cluster: Option<Vec<Result<Value, cel::ExecutionError>>>,
    /// For a `when`: the same condition evaluated without the interpreter.
    pub(crate) fast: Option<super::fast::Fast>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    When,
    Require,
    OrderBy,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::When => "when",
            Field::Require => "require",
            Field::OrderBy => "order_by",
        }
    }
}

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
            cache: if needs.cacheable() {
                DecisionCache::new(cache_size)
            } else {
                None
            },
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

    /// The policy's name, when the document gives one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// Content version: a hash of the document text.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The content version as a number (for a stats gauge).
    pub fn version_number(&self) -> u64 {
        u64::from_str_radix(&self.version, 16).unwrap_or(0)
    }
    /// Request header that carries the chosen cluster.
    pub fn routing_header(&self) -> &str {
        &self.routing_header
    }
    /// Response header that reports the decision, if enabled.
    pub fn decision_header(&self) -> Option<&str> {
        self.decision_header.as_deref()
    }
    pub fn log_level(&self) -> LogLevel {
        self.log_level
    }
    /// Cluster names in inventory order.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(|c| c.name.as_str())
    }
    /// Rule names in document order.
    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }
    /// How many CEL programs this policy compiled (all of them at load).
    pub fn programs_compiled(&self) -> usize {
        self.programs
    }
    /// Entries of the decision cache; 0 when it is off (by option, or
    /// because the policy reads a per-request attribute or the whole header map).
    pub fn decision_cache_size(&self) -> usize {
        self.cache.as_ref().map_or(0, DecisionCache::capacity)
    }
    /// Decision cache hits and misses since load.
    pub fn decision_cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map(DecisionCache::stats)
            .unwrap_or_default()
    }
    /// The attributes this policy reads; the only ones fetched per request.
    pub fn referenced_attributes(&self) -> Vec<String> {
        self.needs.describe()
    }

    /// What tools need to know of a loaded policy: names, rules and their kinds.
    pub fn description(&self) -> PolicyDescription {
        PolicyDescription {
            name: self.name.clone(),
            version: self.version.clone(),
            routing_header: self.routing_header.clone(),
            clusters: self.cluster_names().map(str::to_string).collect(),
            rules: self
                .rules
                .iter()
                .map(|r| RuleDescription {
                    name: r.name.clone(),
                    kind: match r.action {
                        Action::Require(_) => "require",
                        Action::Deny { .. } => "deny",
                        Action::Prefer(_) => "prefer",
                        Action::OrderBy { .. } => "order_by",
                    }
                    .to_string(),
                })
                .collect(),
            reads: self.referenced_attributes(),
        }
    }
}

/// A loaded policy as tools see it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PolicyDescription {
    pub name: Option<String>,
    pub version: String,
    pub routing_header: String,
    pub clusters: Vec<String>,
    pub rules: Vec<RuleDescription>,
    pub reads: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuleDescription {
    pub name: String,
    /// `require`, `deny`, `prefer` or `order_by`.
    pub kind: String,
}

/// A short, stable identifier of a policy's text: FNV-1a 64 folded to 48
/// bits, as 12 hex digits. It fits a stats gauge exactly, so the
/// `celroute.policy_version` gauge and the decision header agree.
pub fn content_version(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", (hash ^ (hash >> 48)) & 0xffff_ffff_ffff)
}

/// The CEL environment policies are compiled and run in: the standard
/// library with the strings and math extensions.
fn policy_env() -> Env {
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
struct FunctionCatalog {
    env: Arc<Env>,
}

impl FunctionCatalog {
    fn new(env: &Arc<Env>) -> FunctionCatalog {
        FunctionCatalog { env: env.clone() }
    }

    fn knows(&self, name: &str) -> bool {
        // cel refuses to add a context function whose name the Env already
        // declares: that refusal is how a declared name is recognised.
        let mut context = Context::with_env(self.env.clone());
        context.add_function(name, || true).is_err()
    }
}

fn compile_clusters(
    document: &PolicyDocument,
    errors: &mut Vec<PolicyError>,
) -> (Vec<(String, Value)>, BTreeSet<String>) {
    let mut clusters = Vec::new();
    let mut fields = BTreeSet::from(["name".to_string()]);
    if document.clusters.is_empty() {
        errors.push(PolicyError::new(
            "clusters",
            "the inventory lists no cluster",
        ));
    }
    for (name, attributes) in &document.clusters {
        let at = format!("clusters.{name}");
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            errors.push(PolicyError::new(
                at.clone(),
                "a cluster name is a non-empty Envoy cluster name without spaces",
            ));
        }
        let mut map: HashMap<Key, Value> = HashMap::new();
        for (field, value) in attributes {
            if field == "name" {
                errors.push(PolicyError::new(
                    format!("{at}.name"),
                    "'name' is set by celroute to the cluster's name; choose another attribute name",
                ));
                continue;
            }
            fields.insert(field.clone());
            map.insert(Key::String(Arc::new(field.clone())), json_to_cel(value));
        }
        map.insert(
            Key::String(Arc::new("name".to_string())),
            Value::String(Arc::new(name.clone())),
        );
        clusters.push((name.clone(), Value::Map(Map { map: Arc::new(map) })));
    }
    (clusters, fields)
}

/// The inventory as CEL's `clusters`: name -> attributes.
fn clusters_map(clusters: &[(String, Value)]) -> Value {
    Value::Map(Map {
        map: Arc::new(
            clusters
                .iter()
                .map(|(name, value)| (Key::String(Arc::new(name.clone())), value.clone()))
                .collect(),
        ),
    })
}

/// What the cost estimate knows of the inventory: the size of each field.
fn cost_inventory(clusters: &[(String, Value)]) -> cost::Inventory {
    let mut fields: HashMap<String, Bound> = HashMap::new();
    let mut cluster = Bound::default();
    for (_, value) in clusters {
        cluster = cluster.max(Bound::of(value));
        if let Value::Map(map) = value {
            for (key, field) in map.map.iter() {
                if let Key::String(name) = key {
                    let bound = fields.entry(name.to_string()).or_default();
                    *bound = bound.max(Bound::of(field));
                }
            }
        }
    }
    cost::Inventory {
        fields,
        cluster,
        clusters: Bound::of(&clusters_map(clusters)),
    }
}

/// A CEL value in the interpreter's own representation.
fn to_val(value: Value) -> Box<dyn cel::common::value::Val> {
    // Inventory values are built from JSON: null, bool, numbers, strings,
    // lists and maps with string keys, all of which convert.
    Box::<dyn cel::common::value::Val>::try_from(value)
        .unwrap_or_else(|_| Box::new(cel::common::types::CelNull))
}

fn json_to_cel(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            _ => Value::Null,
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(fields) => Value::Map(Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                    .collect(),
            ),
        }),
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

/// 1-based line and column (in characters) of a byte offset.
fn column_of(source: &str, offset: usize) -> (usize, usize) {
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
struct Analysis<'a> {
    known: &'a FunctionCatalog,
    cluster_fields: &'a BTreeSet<String>,
    field: Field,
    needs: AttributeNeeds,
    problems: Vec<(u64, String)>,
    /// Variables bound by enclosing comprehensions (`exists(h, ...)`).
    scopes: Vec<String>,
}

impl Analysis<'_> {
    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }

    fn problem(&mut self, id: u64, message: String) {
        self.problems.push((id, message));
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

    fn walk(&mut self, e: &IdedExpr) {
        match &e.expr {
            Expr::Ident(name) => self.ident(e.id, name),
            Expr::Select(select) => {
                if self.is_headers(&select.operand) {
                    // request.headers.name, has(request.headers.name)
                    self.needs.add_header(&select.field);
                    return;
                }
                if let Expr::Ident(root) = &select.operand.expr {
                    if !self.bound(root) {
                        if ROOTS.contains(&root.as_str()) {
                            return self.attribute(e.id, root, &select.field);
                        }
                        if root == "cluster" {
                            self.cluster_available(e.id);
                            if !self.cluster_fields.contains(&select.field) {
                                let hint = did_you_mean(
                                    &select.field,
                                    self.cluster_fields.iter().map(String::as_str),
                                )
                                .map(|c| format!(" (did you mean '{c}'?)"))
                                .unwrap_or_default();
                                let message = format!(
                                    "no cluster in the inventory has the attribute 'cluster.{}'{hint}",
                                    select.field
                                );
                                self.problem(e.id, message);
                            }
                            return;
                        }
                    }
                }
                self.walk(&select.operand);
            }
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                if (name == operators::INDEX || name == operators::OPT_INDEX)
                    && call.args.len() == 2
                    && self.is_headers(&call.args[0])
                {
                    if !self.header_key(e.id, &call.args[1]) {
                        self.needs.add_all_headers();
                        self.walk(&call.args[1]);
                    }
                    return;
                }
                if name == operators::IN && call.args.len() == 2 && self.is_headers(&call.args[1]) {
                    if !self.header_key(e.id, &call.args[0]) {
                        self.needs.add_all_headers();
                        self.walk(&call.args[0]);
                    }
                    return;
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
                            self.problem(e.id, format!("unknown function '{q}'"));
                            walk_target = false;
                        }
                        None => self.problem(e.id, format!("unknown function '{name}'")),
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
            Expr::Comprehension(c) => {
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
        // `clusters` is served from the inventory, never fetched.
        if self.bound(name) || TYPE_NAMES.contains(&name) || name == "clusters" {
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
        let variables = ROOTS.iter().copied().chain(["cluster", "clusters"]);
        let hint = did_you_mean(name, variables)
            .map(|c| format!(" (did you mean '{c}'?)"))
            .unwrap_or_default();
        self.problem(id, format!("undeclared reference to '{name}'{hint}"));
    }

    fn cluster_available(&mut self, id: u64) {
        if self.field == Field::When {
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
    ROOTS.contains(&name) || name == "cluster" || name == "clusters"
}
