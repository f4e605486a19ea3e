//! Hostile and careless policies against the real filter: each is refused
//! with the limit it breaks named, by policy-host and by `envoy --mode
//! validate`, within bounded fuel and memory; published into a running Envoy
//! under load, each is rejected while the previous policy keeps deciding and
//! no request fails. The deepest expressions the limits allow load and run in
//! Envoy's V8 without exhausting its stack.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use celroute::engine::Policy;
use celroute_tests::ecds::{cloud_of, policy_to, Live, Load, FAILURES, RELOADS};
use celroute_tests::envoy::{self, wasm, Config};
use celroute_tests::http::Connection;
use celroute_tests::{start_clouds, Stack};
use policy_host::publish::{ecds_resource, write_atomically};
use policy_host::vm::{FilterModule, StartError, CONFIGURE_FUEL};

/// The inventory of the ECDS test config.
const INVENTORY: &str =
    "clusters:\n  aws-us-east-1: {x: 1, tags: [a, b]}\n  azure-westeurope: {x: 2}\n";

/// A hostile policy and the words of its refusal that name the limit.
struct Hostile {
    what: &'static str,
    policy: String,
    refusal: String,
}

fn one_rule(field: &str, expression: &str, options: &str) -> String {
    let selection = if field == "when" {
        "  prefer: [azure-westeurope]\n"
    } else {
        ""
    };
    format!(
        "{INVENTORY}rules:\n- name: hostile\n  {field}: {}\n{selection}default: aws-us-east-1\n{options}",
        serde_json::json!(expression),
    )
}

fn list(n: usize) -> String {
    format!(
        "[{}]",
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    )
}

fn hostile() -> Vec<Hostile> {
    let l = list(100);
    let m = list(60);
    let rules: String = (0..10_000)
        .map(|i| format!("- {{name: r{i}, require: 'cluster.x == {i}'}}\n"))
        .collect();
    vec![
        Hostile {
            what: "a member chain 5,000 deep",
            policy: one_rule(
                "require",
                &format!("cluster{} == 1", ".x".repeat(5_000)),
                "options:\n  limits: {max_expression_length: 65536}\n",
            ),
            refusal: "the expression nests 5001 levels deep, over the limit of 32 (options.limits.max_expression_depth)".into(),
        },
        Hostile {
            what: "a comprehension of 10^6 iterations over the inventory at load",
            policy: one_rule("require", &format!("{l}.all(a, {l}.all(b, {l}.all(c, a + b + c + cluster.x >= 0)))"), ""),
            refusal: "over the limit of 100000 (options.limits.max_expression_cost)".into(),
        },
        Hostile {
            what: "a comprehension whose estimate was raised, over the budget of the load",
            policy: one_rule(
                "require",
                &format!("{m}.all(a, {m}.all(b, {m}.all(c, a + b + c + cluster.x >= 0)))"),
                "options:\n  limits: {max_expression_cost: 10000000}\n",
            ),
            refusal: "over the evaluation budget of 1000000 (options.limits.evaluation_budget)".into(),
        },
        Hostile {
            what: "a 1 MB expression",
            policy: one_rule("when", &format!("request.path == '/'{}", " || request.path == '/x'".repeat(43_000)), ""),
            refusal: "the expression is 1032019 bytes long, over the limit of 4096 (options.limits.max_expression_length)".into(),
        },
        Hostile {
            what: "a string that grows tenfold per call",
            policy: one_rule("require", &format!("'aaaaaaaaaa'{}.size() > cluster.x", ".replace('a', 'aaaaaaaaaa')".repeat(8)), ""),
            refusal: "over the limit of 100000 (options.limits.max_expression_cost)".into(),
        },
        Hostile {
            what: "lists of lists of strings per request",
            policy: one_rule("when", &format!("{l}.map(a, {l}.map(b, {l}.map(c, request.path))).size() > 0"), ""),
            refusal: "over the limit of 100000 (options.limits.max_expression_cost)".into(),
        },
        Hostile {
            what: "10,000 rules",
            policy: format!("{INVENTORY}rules:\n{rules}"),
            refusal: "rules: the policy has 10000 rules, over the limit of 1000 (options.limits.max_rules)".into(),
        },
        Hostile {
            what: "a 3 MB document",
            policy: format!("{INVENTORY}# {}\n", "x".repeat(3 << 20)),
            refusal: "over the limit of 2097152 bytes a policy may have".into(),
        },
    ]
}

#[test]
fn policy_host_refuses_each_naming_the_limit_within_bounded_fuel_and_memory() {
    let module = FilterModule::load(&wasm().unwrap()).unwrap();
    for case in hostile() {
        let (logs, spent) = match module.start(case.policy.as_bytes()) {
            Err(StartError::Rejected { logs, spent, .. }) => (logs, spent),
            Err(StartError::Fault(fault)) => panic!("{}: the filter faulted: {fault}", case.what),
            Ok(_) => panic!("{}: accepted", case.what),
        };
        let text: Vec<&str> = logs.iter().map(|l| l.message.as_str()).collect();
        assert!(
            text.iter().any(|l| l.contains(&case.refusal)),
            "{}: {text:?}",
            case.what
        );
        println!(
            "{}: refused with {} fuel units and {} MiB of guest memory",
            case.what,
            spent.fuel,
            spent.memory_bytes >> 20
        );
        // Fuel and memory growth are the same on every machine for the same
        // module and input: these bound the work of a refusal, not its speed.
        assert!(
            spent.fuel < CONFIGURE_FUEL / 4,
            "{}: {} fuel",
            case.what,
            spent.fuel
        );
        assert!(
            spent.memory_bytes < 64 << 20,
            "{}: {} bytes of guest memory",
            case.what,
            spent.memory_bytes
        );
    }
}

#[test]
fn envoy_validate_refuses_each_naming_the_limit() {
    let (_runtime, clouds) = start_clouds().unwrap();
    for case in hostile() {
        let config = Config::shipped("envoy.yaml", &clouds)
            .unwrap()
            .with_policy(&case.policy)
            .unwrap();
        let (ok, text) = envoy::validate(&config).unwrap();
        assert!(!ok, "{}: validated", case.what);
        assert!(text.contains(&case.refusal), "{}: {text}", case.what);
        assert!(
            !text.contains("Maximum call stack"),
            "{}: {text}",
            case.what
        );
    }
}

/// Shapes of deep expressions, `n` their size; `request` ones read a header
/// so that they run per request, the others at load.
/// A deep shape: its name, the rule field it goes in, and the expression of size `n`.
type Shape = (&'static str, &'static str, fn(usize) -> String);

fn deep_shapes() -> Vec<Shape> {
    vec![
        ("member chain", "require", |n| {
            format!("cluster{} == 1", ".x".repeat(n))
        }),
        ("sum", "require", |n| {
            format!("cluster.x{} > 0", " + 1".repeat(n))
        }),
        ("parentheses", "require", |n| {
            format!("{}cluster.x == 1{}", "(".repeat(n), ")".repeat(n))
        }),
        ("negations", "require", |n| {
            format!("{}(cluster.x == 1)", "!".repeat(2 * n))
        }),
        ("nested lists", "require", |n| {
            format!(
                "{}cluster.x{}{} == cluster.x",
                "[".repeat(n),
                "]".repeat(n),
                "[0]".repeat(n)
            )
        }),
        ("nested comprehensions", "require", |n| {
            format!("{}cluster.x > 0{}", "[1].all(i, ".repeat(n), ")".repeat(n))
        }),
        ("request, nested conditionals", "when", |n| {
            format!(
                "{}false",
                "request.headers[?'x'].orValue('') == 'a' ? true : ".repeat(n)
            )
        }),
        ("request, nested lists", "when", |n| {
            format!(
                "{}request.path{}{} == '/'",
                "[".repeat(n),
                "]".repeat(n),
                "[0]".repeat(n)
            )
        }),
        ("request, nested comprehensions", "when", |n| {
            format!(
                "{}request.path == '/'{}",
                "[1].exists(i, ".repeat(n),
                ")".repeat(n)
            )
        }),
    ]
}

const DEEPEST: &str =
    "options:\n  limits: {max_expression_depth: 64, max_expression_length: 65536}\n";

/// For each shape, the deepest policy the hard maximum of the depth limit
/// accepts (the next size up is refused for its depth).
fn deepest_policies() -> Vec<(String, String)> {
    deep_shapes()
        .into_iter()
        .map(|(name, field, shape)| {
            let at = |n: usize| one_rule(field, &shape(n), DEEPEST);
            let mut n = 1;
            while Policy::load(&at(n + 1)).is_ok() {
                n += 1;
            }
            match Policy::load(&at(n + 1)) {
                Err(e) => assert!(
                    e.to_string().contains("levels deep, over the limit of 64"),
                    "{name}: {e}"
                ),
                Ok(_) => unreachable!(),
            }
            assert!(Policy::load(&at(n)).is_ok(), "{name}");
            (name.to_string(), at(n))
        })
        .collect()
}

#[test]
fn the_deepest_expressions_the_limits_allow_load_and_run_in_envoy() {
    let module = FilterModule::load(&wasm().unwrap()).unwrap();
    let policies = deepest_policies();
    for (name, policy) in &policies {
        let mut vm = module
            .start(policy.as_bytes())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let spec = policy_host::request::RequestSpec::default();
        vm.request(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // In Envoy: each policy loads (inventory-only ones are evaluated at load),
    // and a request runs the per-request ones.
    for (name, policy) in &policies {
        let stack =
            Stack::start(|c| c.with_policy(policy)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let mut connection = Connection::open(stack.envoy.listener).unwrap();
        // Routed, or denied by the policy for lack of a candidate where the
        // expression errs (`.x` of a number): either way the filter decided.
        for _ in 0..3 {
            let reply = connection.send("GET", "/", &[("x", b"b")], b"").unwrap();
            let decided = reply.status == 200
                || (reply.status == 451 && reply.body.contains("\"rule\":\"hostile\""));
            assert!(decided, "{name}: {} {}", reply.status, reply.body);
        }
        let log = stack.envoy.log_text();
        assert!(
            !log.contains("Maximum call stack") && !log.contains("Wasm VM failed"),
            "{name}: {log}"
        );
    }
}

#[test]
fn each_published_into_a_running_envoy_under_load_leaves_the_old_policy_deciding() {
    let good = policy_to("azure-westeurope");
    let live = Live::start(&good).unwrap();
    let version = celroute::engine::content_version(&good);
    let listener = live.envoy().listener;
    let load = Load::start(listener, 4, move |reply| {
        let decision = reply.header("x-celroute-decision").unwrap_or("");
        let by_old_policy = reply.status == 200
            && reply.cloud() == Some("azure-westeurope")
            && decision.contains(&format!("policy={version}"));
        (!by_old_policy).then(|| format!("{} {decision} {}", reply.status, reply.body))
    });

    let cases = hostile();
    for (i, case) in cases.iter().enumerate() {
        let before = live.envoy().stat(FAILURES).unwrap();
        // Around the validator: straight into the watched directory.
        let resource = ecds_resource(
            "celroute",
            &wasm().unwrap(),
            &case.policy,
            &format!("hostile-{i}"),
        );
        write_atomically(&live.dir.path().join("celroute.yaml"), resource.as_bytes()).unwrap();
        live.wait_for(FAILURES, before).unwrap();
        let log = live.envoy().log_text();
        assert!(
            log.contains("policy rejected, the previous configuration stays in force")
                && log.contains(&case.refusal),
            "{}: {log}",
            case.what
        );
    }
    let report = load.stop();
    println!(
        "{} hostile policies published under load: {} requests, {} failed",
        cases.len(),
        report.total,
        report.failures.len()
    );
    report.check(200).unwrap();
    let envoy = live.envoy();
    assert!(
        envoy
            .stat("wasmcustom.celroute.configurations_rejected")
            .unwrap()
            >= cases.len() as u64
    );
    // No VM failed or was restarted: the one that refused the updates
    // still decides.
    let wasm_stats: BTreeMap<String, u64> = envoy.stats("wasm").unwrap();
    println!("{wasm_stats:?}");
    for stat in ["wasm.celroute.vm_reload", "wasm.celroute.vm_reload_failure"] {
        assert_eq!(wasm_stats.get(stat), Some(&0), "{stat}: {wasm_stats:?}");
    }
    assert!(wasm_stats["wasm.envoy.wasm.runtime.v8.active"] >= 1);
    assert!(!envoy.log_text().contains("Maximum call stack"));
    // And a good policy still goes live after them.
    let before = envoy.stat(RELOADS).unwrap();
    live.publish("good.yaml", &policy_to("aws-us-east-1"))
        .unwrap();
    live.wait_for(RELOADS, before).unwrap();
    let mut connection = Connection::open(listener).unwrap();
    assert_eq!(cloud_of(&mut connection).unwrap(), "aws-us-east-1");
}
