//! The bad-input corpus: invalid and hostile policies
//! (`tests/corpus/bad-policies.yaml`, plus the generated ones below), each
//! refused with an error naming what is wrong and where: by the engine, and
//! by the real filter in policy-host within bounded fuel and guest memory.
//! Fuel and memory are the same on every machine for the same module and
//! input: they bound the work of a refusal, not its speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use celroute::engine::Policy;
use celroute_tests::envoy::wasm;
use celroute_tests::repo_root;
use policy_host::vm::{FilterModule, StartError, CONFIGURE_FUEL};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    policy: String,
    error: String,
}

/// A bad policy as bytes, and the words its refusal must contain.
struct Bad {
    name: String,
    policy: Vec<u8>,
    error: String,
}

fn corpus() -> Vec<Bad> {
    let path = repo_root().join("tests/corpus/bad-policies.yaml");
    let cases: Vec<Case> = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut all: Vec<Bad> = cases
        .into_iter()
        .map(|c| Bad {
            name: c.name,
            policy: c.policy.into_bytes(),
            error: c.error,
        })
        .collect();
    all.extend(generated());
    all
}

/// Cases too large or too binary to write by hand.
fn generated() -> Vec<Bad> {
    let rule = |expression: String| {
        format!("clusters:\n  a: {{x: 1}}\nrules:\n  - name: big\n    require: {expression:?}\n")
            .into_bytes()
    };
    let bad = |name: &str, policy: Vec<u8>, error: &str| Bad {
        name: name.to_string(),
        policy,
        error: error.to_string(),
    };
    let rules: String = (0..10_000)
        .map(|i| format!("  - {{name: r{i}, require: 'cluster.x == {i}'}}\n"))
        .collect();
    let nested_yaml = format!(
        "clusters:\n  a: {{x: {}1{}}}\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    let deep_inventory = format!(
        "clusters:\n  a: {{x: {}1{}}}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    vec![
        bad(
            "non-UTF-8 bytes",
            b"clusters:\n  a: {x: \xff\xfe}\n".to_vec(),
            "UTF-8",
        ),
        bad(
            "a megabyte expression",
            rule(format!("cluster.x == {}", "1 + ".repeat(250_000) + "1")),
            "rule 'big' (rules[0]): require: the expression is 1000014 bytes long, over the limit of 4096",
        ),
        bad(
            "10,000 rules",
            format!("clusters:\n  a: {{x: 1}}\nrules:\n{rules}").into_bytes(),
            "rules: the policy has 10000 rules, over the limit of 1000",
        ),
        bad(
            "an expression nested 100 deep",
            rule(format!("{}true{}", "(".repeat(100), ")".repeat(100))),
            "rule 'big' (rules[0]): require: the expression nests 100 levels deep",
        ),
        bad(
            "a document over 2 MiB",
            format!("# {}\nclusters:\n  a: {{}}\n", "x".repeat(3 << 20)).into_bytes(),
            "policy: the document is 3145749 bytes, over the limit of 2097152 bytes",
        ),
        bad(
            "YAML nested 200 levels",
            nested_yaml.into_bytes(),
            "128",
        ),
        bad(
            "an inventory value nested 40 levels",
            deep_inventory.into_bytes(),
            "clusters.a.x",
        ),
        bad(
            "a regex too large to compile",
            rule("request.path.matches('((a{100}){100}){100}')".to_string()),
            "rule 'big' (rules[0]): require: '((a{100}){100}){100}' is not a valid regular expression: compiled regex exceeded size limit",
        ),
    ]
}

#[test]
fn the_corpus_is_large_enough() {
    assert!(corpus().len() >= 50, "{} cases", corpus().len());
}

#[test]
fn the_engine_refuses_each_naming_the_place() {
    let mut wrong = Vec::new();
    for case in corpus() {
        let Ok(text) = std::str::from_utf8(&case.policy) else {
            continue; // bytes: only the filter sees them
        };
        match Policy::load(text) {
            Ok(_) => wrong.push(format!("{}: accepted", case.name)),
            Err(e) if e.to_string().contains(&case.error) => {}
            Err(e) => wrong.push(format!(
                "{}: expected {:?} in:\n    {}",
                case.name,
                case.error,
                e.to_string().replace('\n', "\n    ")
            )),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_filter_refuses_each_within_bounded_fuel_and_memory() {
    let module = FilterModule::load(&wasm().unwrap()).unwrap();
    let mut wrong = Vec::new();
    for case in corpus() {
        let (logs, spent) = match module.start(&case.policy) {
            Err(StartError::Rejected { logs, spent, .. }) => (logs, spent),
            Err(StartError::Fault(fault)) => {
                wrong.push(format!("{}: the filter faulted: {fault}", case.name));
                continue;
            }
            Ok(_) => {
                wrong.push(format!("{}: accepted", case.name));
                continue;
            }
        };
        let text: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
        if !text.iter().any(|l| l.contains(&case.error)) {
            wrong.push(format!(
                "{}: expected {:?} in {text:?}",
                case.name, case.error
            ));
        }
        if spent.fuel >= CONFIGURE_FUEL / 4 || spent.memory_bytes >= 64 << 20 {
            wrong.push(format!(
                "{}: {} fuel, {} bytes of guest memory",
                case.name, spent.fuel, spent.memory_bytes
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
