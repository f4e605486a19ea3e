//! The CEL corpus: every CEL expression in the repository's policies and
//! tests, and the CEL specification's conformance tests that need no
//! protocol buffer messages (from `../shared/cel-spec`, or `CEL_SPEC_DIR`).
//!
//! - Each expression parses to the same syntax tree with the Pratt parser
//!   policies are compiled with as with cel's ANTLR parser, or fails with both;
//!   each specification case evaluates to the same result with both.
//! - The pass rate against the specification's expected values, per file, is
//!   the table in docs/cel-conformance.md; the test fails when they differ.
//!   `CELROUTE_BLESS=1` rewrites the table.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

#[path = "support/textproto.rs"]
mod textproto;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cel::common::ast::SourceInfo;
use cel::objects::Key;
use cel::{Context, Env, IdedExpr, Value};
use textproto::Node;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn spec_dir() -> PathBuf {
    let dir = std::env::var_os("CEL_SPEC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository().join("../shared/cel-spec"));
    assert!(
        dir.join("basic.textproto").is_file(),
        "the CEL specification's conformance data is not in {} (set CEL_SPEC_DIR)",
        dir.display()
    );
    dir
}

fn env() -> Arc<Env> {
    Arc::new(celroute::engine::testing::policy_env())
}

/// A syntax tree as text, each node's id (the two parsers number nodes
/// differently) replaced by the span of source it was written at, or the
/// failure.
fn shape(expr: &IdedExpr, info: &SourceInfo) -> String {
    let text = format!("{expr:?}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("id: ") {
        out.push_str(&rest[..at]);
        rest = &rest[at + 4..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let id: u64 = rest[..digits].parse().unwrap_or(0);
        let _ = write!(out, "at: {:?}", info.offset_for(id));
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// The Pratt parser's tree (what `Env::compile` gives policies) and the
/// ANTLR parser's, with where each node was written; `None` when they agree.
fn parser_difference(env: &Env, source: &str) -> Option<String> {
    let pratt = env
        .compile(source)
        .map(|p| shape(p.expression(), p.source_info()))
        .map_err(|e| e.to_string());
    let antlr = env
        .parser()
        .parse_with_source_info(source)
        .map(|(e, i)| shape(&e, &i))
        .map_err(|e| e.to_string());
    match (&pratt, &antlr) {
        (Ok(a), Ok(b)) if a == b => None,
        (Err(_), Err(_)) => None,
        _ => Some(format!(
            "`{source}`\n  pratt: {}\n  antlr: {}",
            abbreviate(&pratt),
            abbreviate(&antlr)
        )),
    }
}

fn abbreviate(r: &Result<String, String>) -> String {
    let s = match r {
        Ok(s) => format!("ok {s}"),
        Err(e) => format!("error {e}"),
    };
    s.chars().take(600).collect()
}

// ---- the repository's expressions ----------------------------------------

const EXPRESSION_KEYS: [&str; 5] = ["when", "require", "order_by", "split", "sticky_by"];

/// Every expression written in a policy in the repository: in YAML files
/// (policies, test files, the bad-policy corpus, policies embedded as text),
/// and in the Rust sources' inline policies (one `key: expression` per line).
fn repository_expressions() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut files = Vec::new();
    collect_files(&repository(), &mut files);
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let place = file
            .strip_prefix(repository())
            .unwrap_or(&file)
            .display()
            .to_string();
        match file.extension().and_then(|e| e.to_str()) {
            Some("yaml") | Some("yml") => {
                if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(&text) {
                    walk_yaml(&value, &place, &mut found);
                }
            }
            Some("rs") => {
                for line in text.lines() {
                    let line = line.trim().trim_start_matches("- ");
                    let written = |k: &&str| {
                        line.starts_with(&format!("{k}: "))
                            || (line.starts_with('{') && line.contains(&format!(" {k}: ")))
                    };
                    if !EXPRESSION_KEYS.iter().any(written)
                        || line.contains(": Some(")
                        || line.contains(": None")
                    {
                        continue;
                    }
                    if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(line) {
                        walk_yaml(&value, &place, &mut found);
                    }
                }
            }
            // The documentation's YAML examples.
            Some("md") => {
                let mut block: Option<String> = None;
                for line in text.lines() {
                    match (&mut block, line.trim_start()) {
                        (None, l) if l.starts_with("```yaml") => block = Some(String::new()),
                        (Some(b), l) if l.starts_with("```") => {
                            if let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(b) {
                                walk_yaml(&value, &place, &mut found);
                            }
                            block = None;
                        }
                        (Some(b), _) => {
                            b.push_str(line);
                            b.push('\n');
                        }
                        (None, _) => {}
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && !matches!(name.as_ref(), "target" | "vendor") {
                collect_files(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

fn walk_yaml(value: &serde_yaml::Value, place: &str, found: &mut BTreeMap<String, String>) {
    use serde_yaml::Value as Y;
    match value {
        Y::Mapping(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    (Some(key), Y::String(source)) if EXPRESSION_KEYS.contains(&key) => {
                        found
                            .entry(source.clone())
                            .or_insert_with(|| place.to_string());
                    }
                    _ => walk_yaml(v, place, found),
                }
            }
        }
        Y::Sequence(items) => {
            for item in items {
                walk_yaml(item, place, found);
            }
        }
        // A policy embedded as text (the bad-policy corpus, test files).
        Y::String(text) if text.contains("rules") => {
            if let Ok(inner) = serde_yaml::from_str::<serde_yaml::Value>(text) {
                if !matches!(inner, Y::String(_)) {
                    walk_yaml(&inner, place, found);
                }
            }
        }
        Y::Tagged(tagged) => walk_yaml(&tagged.value, place, found),
        _ => {}
    }
}

#[test]
fn the_repositorys_expressions_parse_the_same_with_both_parsers() {
    let env = env();
    let expressions = repository_expressions();
    assert!(
        expressions.len() >= 80,
        "only {} expressions found in the repository",
        expressions.len()
    );
    let differences: Vec<String> = expressions
        .iter()
        .filter_map(|(source, place)| {
            parser_difference(&env, source).map(|d| format!("{place}: {d}"))
        })
        .collect();
    println!("{} expressions from the repository", expressions.len());
    assert!(
        differences.is_empty(),
        "{} of {} expressions parse differently:\n{}",
        differences.len(),
        expressions.len(),
        differences.join("\n")
    );
}

// ---- the specification's conformance tests -------------------------------

/// What a case expects.
enum Expected {
    Value(Value),
    Type(String),
    Error,
}

/// Why a case is left out.
type Skip = &'static str;

const PROTO_MARKERS: [&str; 6] = [
    "google.protobuf.",
    "TestAllTypes",
    "cel.expr.",
    "NestedTestAllTypes",
    "GlobalEnum",
    "proto2",
];

fn expected_value(node: &Node) -> Result<Expected, Skip> {
    let (kind, inner) = node.fields().first().ok_or("an empty expected value")?;
    let word = |n: &Node| match n {
        Node::Word(w) => w.clone(),
        Node::Str(b) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    let value = match kind.as_str() {
        "null_value" => Value::Null,
        "bool_value" => Value::Bool(word(inner) == "true"),
        "int64_value" => Value::Int(word(inner).parse().map_err(|_| "a bad int64_value")?),
        "uint64_value" => Value::UInt(word(inner).parse().map_err(|_| "a bad uint64_value")?),
        "double_value" => Value::Float(parse_double(&word(inner)).ok_or("a bad double_value")?),
        "string_value" => match inner {
            Node::Str(b) => Value::String(Arc::new(
                String::from_utf8(b.clone()).map_err(|_| "a string that is not UTF-8")?,
            )),
            _ => return Err("a bad string_value"),
        },
        "bytes_value" => match inner {
            Node::Str(b) => Value::Bytes(Arc::new(b.clone())),
            _ => return Err("a bad bytes_value"),
        },
        "type_value" => return Ok(Expected::Type(word(inner))),
        "list_value" => {
            let mut items = Vec::new();
            for item in inner.all("values") {
                match expected_value(item)? {
                    Expected::Value(v) => items.push(v),
                    _ => return Err("a list of types"),
                }
            }
            Value::List(Arc::new(items))
        }
        "map_value" => {
            let mut map = std::collections::HashMap::new();
            for entry in inner.all("entries") {
                let key = match expected_value(entry.get("key").ok_or("a map entry without key")?)?
                {
                    Expected::Value(Value::Int(i)) => Key::Int(i),
                    Expected::Value(Value::UInt(u)) => Key::Uint(u),
                    Expected::Value(Value::Bool(b)) => Key::Bool(b),
                    Expected::Value(Value::String(s)) => Key::String(s),
                    _ => return Err("a map key of another type"),
                };
                let value =
                    match expected_value(entry.get("value").ok_or("a map entry without value")?)? {
                        Expected::Value(v) => v,
                        _ => return Err("a map of types"),
                    };
                map.insert(key, value);
            }
            Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
        "object_value" => return well_known(inner),
        _ => return Err("protocol buffer values"),
    };
    Ok(Expected::Value(value))
}

/// `google.protobuf.Duration` and `Timestamp` are CEL's own duration and
/// timestamp; any other message needs protocol buffers.
fn well_known(node: &Node) -> Result<Expected, Skip> {
    let (kind, fields) = node.fields().first().ok_or("an empty object_value")?;
    let int = |name: &str| match fields.get(name) {
        Some(Node::Word(w)) => w.parse::<i64>().map_err(|_| "a bad number"),
        None => Ok(0),
        _ => Err("a bad number"),
    };
    let (seconds, nanos) = (int("seconds")?, int("nanos")?);
    match kind.as_str() {
        "[type.googleapis.com/google.protobuf.Duration]" => Ok(Expected::Value(Value::Duration(
            chrono::Duration::seconds(seconds) + chrono::Duration::nanoseconds(nanos),
        ))),
        "[type.googleapis.com/google.protobuf.Timestamp]" => {
            let t = chrono::DateTime::from_timestamp(seconds, nanos as u32)
                .ok_or("a timestamp out of range")?;
            Ok(Expected::Value(Value::Timestamp(t.fixed_offset())))
        }
        _ => Err("protocol buffer messages"),
    }
}

fn parse_double(word: &str) -> Option<f64> {
    match word.trim_start_matches('+') {
        "inf" | "infinity" | "Infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" | "-Infinity" => Some(f64::NEG_INFINITY),
        "nan" | "NaN" | "-nan" => Some(f64::NAN),
        w => w.trim_end_matches(['f', 'F']).parse().ok(),
    }
}

/// CEL's strict equality for expected values: same type, same value (NaN
/// equals NaN here, as a test expecting NaN means).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::List(x), Value::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.map.len() == y.map.len()
                && x.map
                    .iter()
                    .all(|(k, v)| y.map.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Timestamp(x), Value::Timestamp(y)) => x == y,
        (Value::Duration(x), Value::Duration(y)) => x == y,
        (Value::Int(_), Value::Int(_))
        | (Value::UInt(_), Value::UInt(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bytes(_), Value::Bytes(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => a == b,
        _ => false,
    }
}

/// One case, ready to run, or why it is left out.
struct Case {
    section: String,
    name: String,
    expr: String,
    bindings: Vec<(String, Value)>,
    expected: Expected,
}

fn case(section: &str, test: &Node) -> Result<Case, Skip> {
    let name = test.text("name").unwrap_or_default();
    let expr = test.text("expr").ok_or("no expression")?;
    let flag = |f: &str| matches!(test.get(f), Some(Node::Word(w)) if w == "true");
    if test.get("container").is_some() {
        return Err("a container");
    }
    if flag("disable_macros") {
        return Err("macros turned off");
    }
    if flag("check_only") {
        return Err("type checking only");
    }
    if test.get("unknown").is_some() || test.get("any_unknowns").is_some() {
        return Err("unknown values");
    }
    if PROTO_MARKERS.iter().any(|m| expr.contains(m)) {
        return Err("protocol buffer messages");
    }
    let mut bindings = Vec::new();
    for binding in test.all("bindings") {
        let key = binding.text("key").ok_or("a binding without a key")?;
        let value = binding
            .get("value")
            .and_then(|v| v.get("value"))
            .ok_or("a binding that is not a value")?;
        match expected_value(value)? {
            Expected::Value(v) => bindings.push((key, v)),
            _ => return Err("a binding of a type"),
        }
    }
    let expected = if let Some(value) = test.get("value") {
        expected_value(value)?
    } else if let Some(typed) = test.get("typed_result") {
        expected_value(typed.get("result").ok_or("typed_result without result")?)?
    } else if test.get("eval_error").is_some() || test.get("any_eval_errors").is_some() {
        Expected::Error
    } else {
        // A case with no expected result expects true.
        Expected::Value(Value::Bool(true))
    };
    Ok(Case {
        section: section.to_string(),
        name,
        expr,
        bindings,
        expected,
    })
}

/// `source` evaluated with `bindings`, parsed by the Pratt parser (as
/// policies are) or by the ANTLR parser.
fn run(
    env: &Arc<Env>,
    source: &str,
    bindings: &[(String, Value)],
    pratt: bool,
) -> Result<Value, String> {
    let mut context = Context::with_env(env.clone());
    for (name, value) in bindings {
        context.add_variable_from_value(name.clone(), value.clone());
    }
    let expression = if pratt {
        env.compile(source)
            .map(|p| p.expression().clone())
            .map_err(|e| format!("parse: {e}"))?
    } else {
        env.parser()
            .parse(source)
            .map_err(|e| format!("parse: {e}"))?
    };
    Value::resolve(&expression, &context).map_err(|e| format!("{e:?}"))
}

fn passes(env: &Arc<Env>, case: &Case, result: &Result<Value, String>) -> bool {
    match (result, &case.expected) {
        (Ok(v), Expected::Value(e)) => same(v, e),
        // A type value leaves the interpreter as its name, like a string:
        // CEL itself tells them apart.
        (Ok(_), Expected::Type(name)) => {
            let check = format!("type({0}) == type && ({0}) == {name}", case.expr);
            matches!(
                run(env, &check, &case.bindings, true),
                Ok(Value::Bool(true))
            )
        }
        (Err(e), Expected::Error) => !e.starts_with("parse:"),
        _ => false,
    }
}

fn same_result(a: &Result<Value, String>, b: &Result<Value, String>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => same(x, y) || format!("{x:?}") == format!("{y:?}"),
        (Err(x), Err(y)) => x.starts_with("parse:") == y.starts_with("parse:"),
        _ => false,
    }
}

#[derive(Default)]
struct FileReport {
    cases: usize,
    skipped: BTreeMap<Skip, usize>,
    passed: usize,
    failed: Vec<String>,
}

impl FileReport {
    fn run(&self) -> usize {
        self.passed + self.failed.len()
    }
}

const TABLE_START: &str = "<!-- conformance table: start -->";
const TABLE_END: &str = "<!-- conformance table: end -->";

#[test]
fn the_specifications_cases_evaluate_the_same_with_both_parsers_and_the_pass_rate_is_documented() {
    let env = env();
    let dir = spec_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "textproto"))
        .collect();
    names.sort();
    let mut reports = BTreeMap::new();
    let mut differences = Vec::new();
    for path in &names {
        let text = std::fs::read_to_string(path).unwrap();
        let file = textproto::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let mut report = FileReport::default();
        for section in file.all("section") {
            let section_name = section.text("name").unwrap_or_default();
            for test in section.all("test") {
                report.cases += 1;
                let case = match case(&section_name, test) {
                    Ok(case) => case,
                    Err(skip) => {
                        *report.skipped.entry(skip).or_default() += 1;
                        continue;
                    }
                };
                if let Some(d) = parser_difference(&env, &case.expr) {
                    differences.push(format!("{stem}/{}/{}: {d}", case.section, case.name));
                }
                let pratt = run(&env, &case.expr, &case.bindings, true);
                let antlr = run(&env, &case.expr, &case.bindings, false);
                if !same_result(&pratt, &antlr) {
                    differences.push(format!(
                        "{stem}/{}/{}: `{}` evaluates to {pratt:?} (pratt), {antlr:?} (antlr)",
                        case.section, case.name, case.expr
                    ));
                }
                if passes(&env, &case, &pratt) {
                    report.passed += 1;
                } else {
                    report
                        .failed
                        .push(format!("{}/{}", case.section, case.name));
                }
            }
        }
        reports.insert(stem, report);
    }
    let table = table(&reports);
    println!("{table}");
    for (stem, report) in &reports {
        for failed in &report.failed {
            println!("fails: {stem}/{failed}");
        }
    }
    assert!(
        differences.is_empty(),
        "{} cases differ between the parsers:\n{}",
        differences.len(),
        differences.join("\n")
    );
    let total: usize = reports.values().map(FileReport::run).sum();
    assert!(total >= 1000, "only {total} cases ran");

    let doc_path = repository().join("docs/cel-conformance.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let (Some(start), Some(end)) = (doc.find(TABLE_START), doc.find(TABLE_END)) else {
        panic!("{} lacks the table's markers", doc_path.display());
    };
    let documented = &doc[start + TABLE_START.len()..end];
    if documented.trim() != table.trim() {
        if std::env::var_os("CELROUTE_BLESS").is_some() {
            let updated = format!(
                "{}{TABLE_START}\n{}\n{}",
                &doc[..start],
                table.trim(),
                &doc[end..]
            );
            std::fs::write(&doc_path, updated).unwrap();
        } else {
            panic!(
                "docs/cel-conformance.md's table differs from the measured one \
                 (CELROUTE_BLESS=1 rewrites it):\n{table}"
            );
        }
    }
}

fn table(reports: &BTreeMap<String, FileReport>) -> String {
    let mut out = String::from(
        "| file | cases | need what celroute does not have | run | pass | pass rate |\n|---|---:|---|---:|---:|---:|\n",
    );
    let (mut cases, mut run, mut passed) = (0, 0, 0);
    for (stem, r) in reports {
        let skipped: Vec<String> = r
            .skipped
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect();
        let _ = writeln!(
            out,
            "| {stem} | {} | {} | {} | {} | {} |",
            r.cases,
            if skipped.is_empty() {
                "".to_string()
            } else {
                skipped.join(", ")
            },
            r.run(),
            r.passed,
            percent(r.passed, r.run())
        );
        cases += r.cases;
        run += r.run();
        passed += r.passed;
    }
    let _ = writeln!(
        out,
        "| **all** | {cases} | {} | {run} | {passed} | {} |",
        cases - run,
        percent(passed, run)
    );
    out
}

fn percent(part: usize, whole: usize) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / whole as f64)
    }
}

// ---- regular expressions and time zones -----------------------------------

fn eval(env: &Arc<Env>, source: &str) -> Result<Value, String> {
    run(env, source, &[], true)
}

/// `matches()` follows RE2 where docs/policy-reference.md says so, and
/// differs where it says so.
#[test]
fn matches_follows_re2() {
    let env = env();
    let cases: &[(&str, bool)] = &[
        (r"'gpt-4o-mini'.matches('^gpt-[0-9]+o?(-mini)?$')", true),
        (r"'abc123'.matches('\\d+')", true),
        (r"'abc'.matches('^\\w+$')", true),
        (r"'a b'.matches('a\\sb')", true),
        (r"'foo bar'.matches('\\bbar\\b')", true),
        (r"'foobar'.matches('\\bbar\\b')", false),
        (r"'GPT-4'.matches('(?i)^gpt')", true),
        (r"'aaa'.matches('^a+?$')", true),
        (r"'x\ny'.matches('x.y')", false),
        (r"'x\ny'.matches('(?s)x.y')", true),
        (r"'a\nb'.matches('(?m)^b$')", true),
        (r"'Straße'.matches('^[[:alpha:]]+$')", false),
        (r"'abc'.matches('^[[:alpha:]]+$')", true),
        (r"'embed-v3'.matches('(?i)embed|bge|e5-')", true),
        (r"'ÿ'.matches('^.$')", true),
        (r"'k-1'.matches('^(?P<kind>[a-z])-(?P<n>\\d)$')", true),
        // ASCII classes, as RE2's.
        (r"'é'.matches('^\\w$')", false),
        (r"'٣'.matches('^\\d$')", false),
        // Case folding is ASCII only (RE2 folds Unicode letters).
        (r"'É'.matches('(?i)^é$')", false),
    ];
    for (source, expected) in cases {
        assert_eq!(eval(&env, source), Ok(Value::Bool(*expected)), "{source}");
    }
    for pattern in [r"\\p{Greek}", r"\\pL", "(?=a)", r"(a)\\1"] {
        let source = format!("'a'.matches('{pattern}')");
        assert!(eval(&env, &source).is_err(), "{source} should fail");
    }
}

/// Every zone docs/policy-reference.md lists is compiled in, its aliases
/// too, and a zone left out is an error.
#[test]
fn documented_time_zones_are_compiled_in() {
    let env = env();
    let doc = std::fs::read_to_string(repository().join("docs/policy-reference.md")).unwrap();
    let (start, end) = (
        doc.find("<!-- time zones: start -->").unwrap(),
        doc.find("<!-- time zones: end -->").unwrap(),
    );
    let zones: Vec<&str> = doc[start..end]
        .trim_start_matches("<!-- time zones: start -->")
        .split(',')
        .map(str::trim)
        .filter(|z| !z.is_empty())
        .collect();
    assert!(zones.len() > 50, "{} zones listed", zones.len());
    let offset_of = |zone: &str| {
        eval(
            &env,
            &format!("timestamp('2009-02-13T23:31:30Z').getHours('{zone}')"),
        )
    };
    for zone in zones.iter().chain(&["Asia/Calcutta", "+05:30", "-02:00"]) {
        assert!(
            matches!(offset_of(zone), Ok(Value::Int(_))),
            "{zone}: {:?}",
            offset_of(zone)
        );
    }
    assert_eq!(offset_of("Asia/Tokyo"), Ok(Value::Int(8)));
    assert_eq!(offset_of("America/St_Johns"), Ok(Value::Int(20)));
    for missing in ["Asia/Kabul", "America/Anchorage", "Mars/Olympus"] {
        assert!(offset_of(missing).is_err(), "{missing} is compiled in");
    }
}
