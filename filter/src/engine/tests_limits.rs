//! Hostile and careless policies: refused at load with the limit named, or,
//! when they slip past the estimate, stopped by the evaluation budget.

use super::testing::TestHost;
use super::*;

const INVENTORY: &str = "clusters:\n  a: {x: 1, tags: [red, blue]}\n  b: {x: 2, tags: [green]}\n";

/// A policy of one `require` (or `when`, with `field`) over the test inventory.
fn policy(field: &str, expression: &str, options: &str) -> String {
    let action = if field == "when" {
        "  when: ".to_string() + &serde_json::json!(expression).to_string() + "\n  prefer: [b]\n"
    } else {
        format!("  {field}: {}\n", serde_json::json!(expression))
    };
    format!("{INVENTORY}rules:\n- name: r\n{action}default: a\n{options}")
}

fn refusal(text: &str) -> String {
    match Policy::load(text) {
        Ok(_) => panic!("the policy should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn list(n: usize) -> String {
    format!(
        "[{}]",
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    )
}

#[test]
fn too_many_rules_are_refused_before_anything_compiles() {
    let rules: String = (0..10_000)
        .map(|i| format!("- {{name: r{i}, require: 'cluster.x == {i}'}}\n"))
        .collect();
    let message = refusal(&format!("{INVENTORY}rules:\n{rules}"));
    assert_eq!(
        message,
        "rules: the policy has 10000 rules, over the limit of 1000 (options.limits.max_rules); options.limits.max_rules raises it, up to 5000"
    );
    // Raised within the hard maximum, a policy of 1,500 rules loads.
    let rules: String = (0..1_500)
        .map(|i| format!("- {{name: r{i}, require: 'cluster.x == {i}'}}\n"))
        .collect();
    let text = format!("{INVENTORY}rules:\n{rules}options:\n  limits: {{max_rules: 2000}}\n");
    assert!(Policy::load(&text).is_ok());
}

#[test]
fn a_limit_outside_its_range_is_an_error() {
    let message = refusal(&policy(
        "require",
        "true",
        "options:\n  limits: {max_rules: 10000}\n",
    ));
    assert!(
        message.contains("options.limits.max_rules: 10000 is outside 1 to 5000"),
        "{message}"
    );
    let message = refusal(&policy(
        "require",
        "true",
        "options:\n  limits: {max_expression_depth: 0}\n",
    ));
    assert!(
        message.contains("options.limits.max_expression_depth: 0 is outside 1 to 64"),
        "{message}"
    );
    let message = refusal(&policy(
        "require",
        "true",
        "options:\n  limits: {max_depth: 3}\n",
    ));
    assert!(message.contains("unknown field `max_depth`"), "{message}");
}

#[test]
fn long_and_deep_expressions_are_refused_before_parsing() {
    let huge = format!("cluster.x == 1{}", " || cluster.x == 1".repeat(60_000));
    let message = refusal(&policy("require", &huge, ""));
    assert!(
        message.starts_with("rule 'r' (rules[0]): require: the expression is 1080014 bytes long, over the limit of 4096 (options.limits.max_expression_length)"),
        "{message}"
    );
    assert!(
        message.len() < 400,
        "the error quotes no more than a line: {message}"
    );

    let shapes = [
        format!("cluster{} == 1", ".x".repeat(5_000)),
        format!("{}true{}", "(".repeat(2_000), ")".repeat(2_000)),
        format!("{}true", "!".repeat(4_000)),
        format!("cluster.x{} > 0", " + 1".repeat(900)),
    ];
    for shape in shapes {
        let message = refusal(&policy(
            "require",
            &shape,
            "options:\n  limits: {max_expression_length: 65536}\n",
        ));
        assert!(
            message.contains(
                "levels deep, over the limit of 32 (options.limits.max_expression_depth)"
            ),
            "{message}"
        );
    }
    // At the default depth, a 32-deep expression loads; one level more is refused.
    let at_limit = format!("cluster{} == 1", ".x".repeat(31));
    assert!(Policy::load(&policy("require", &at_limit, "")).is_ok());
    let over = format!("cluster{} == 1", ".x".repeat(32));
    assert!(refusal(&policy("require", &over, "")).contains("nests 33 levels deep"));
}

#[test]
fn expensive_expressions_are_refused_by_their_estimate() {
    let l = list(100);
    // 100^3 iterations at load.
    let cube = format!("{l}.all(a, {l}.all(b, {l}.all(c, a + b + c >= 0)))");
    let message = refusal(&policy("require", &cube, ""));
    assert!(message.contains("worst case is estimated at"), "{message}");
    assert!(
        message.contains("over the limit of 100000 (options.limits.max_expression_cost)"),
        "{message}"
    );
    // A string that grows tenfold per call.
    let bomb = format!(
        "'aaaaaaaaaa'{}.size() > 0",
        ".replace('a', 'aaaaaaaaaa')".repeat(8)
    );
    assert!(refusal(&policy("require", &bomb, "")).contains("options.limits.max_expression_cost"));
    // Lists of lists built from a request header.
    let split = "request.headers[?'x'].orValue('').split('').map(a, request.headers[?'x'].orValue('').split('')).size() > 0";
    assert!(refusal(&policy("when", split, "")).contains("options.limits.max_expression_cost"));
    // Ordinary comprehensions stay far below the limit.
    for ok in [
        "cluster.tags.exists(t, t == 'red')",
        "request.headers[?'x-models'].orValue('').split(',').exists(m, m == cluster.name)",
        "request.headers.exists(k, k.startsWith('x-'))",
    ] {
        if let Err(e) = Policy::load(&policy("require", ok, "")) {
            panic!("{ok}: {e}");
        }
    }
}

#[test]
fn inventory_precomputation_is_bounded_by_the_budget() {
    // Each expression passes its own estimate once raised, but evaluating
    // them for every cluster at load would spend more than the budget.
    let l = list(300);
    let square = format!("{l}.all(a, {l}.all(b, a + b >= 0))");
    let options =
        "options:\n  limits: {max_expression_cost: 10000000, evaluation_budget: 100000}\n";
    let message = refusal(&policy("require", &square, options));
    assert!(
        message.contains("at load is estimated at")
            && message.contains("over the evaluation budget of 100000"),
        "{message}"
    );
}

#[test]
fn an_evaluation_over_the_budget_fails_closed() {
    // The estimate assumes header values of at most 8 KiB; this request's is
    // 200 KiB, and the budget stops the evaluation instead.
    let expression = "request.headers[?'x'].orValue('').split(',').exists(m, m == 'never')";
    let text = policy("when", expression, "");
    let policy = match Policy::load(&text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let small = TestHost::with_headers(&[("x", "a,b,c")]);
    let decision = policy.decide(&mut { small }, true);
    assert_eq!(decision.cluster(), Some("a"), "{decision:?}");
    assert!(decision.errors.is_empty(), "{decision:?}");

    let value = ",".repeat(200_000);
    let mut large = TestHost::with_headers(&[("x", &value)]);
    let decision = policy.decide(&mut large, true);
    // The `when` of a selection rule that errs is skipped: the default routes.
    assert_eq!(decision.cluster(), Some("a"), "{decision:?}");
    assert_eq!(decision.errors.len(), 1, "{decision:?}");
    assert!(
        decision.errors[0].contains(
            "exceeded the evaluation budget of 1000000 (options.limits.evaluation_budget)"
        ),
        "{decision:?}"
    );
}

#[test]
fn a_require_over_the_budget_excludes_the_cluster() {
    let expression = "request.headers[?'x'].orValue('').split(',').all(m, m != cluster.name)";
    let text = policy(
        "require",
        expression,
        "options:\n  limits: {evaluation_budget: 5000}\n",
    );
    let policy = match Policy::load(&text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let decision = policy.decide(&mut TestHost::with_headers(&[("x", "a")]), false);
    assert_eq!(decision.cluster(), Some("b"));
    let value = "z,".repeat(10_000);
    let decision = policy.decide(&mut TestHost::with_headers(&[("x", &value)]), false);
    assert_eq!(
        decision.outcome,
        Outcome::Deny {
            status: 451,
            message: "no cluster satisfies the policy's constraints: rule 'r' excluded the last candidates".into()
        },
        "{decision:?}"
    );
    assert!(
        decision
            .errors
            .iter()
            .all(|e| e.contains("evaluation budget of 5000")),
        "{decision:?}"
    );
    // The budget belongs to one decision: the next one starts afresh.
    let decision = policy.decide(&mut TestHost::with_headers(&[("x", "a")]), false);
    assert_eq!(decision.cluster(), Some("b"));
}

#[test]
fn a_deep_inventory_value_is_refused() {
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let message = refusal(&format!("clusters:\n  a: {{x: {deep}}}\n"));
    assert_eq!(
        message,
        "clusters.a.x: nests 40 levels deep, over the limit of 32 for inventory values"
    );
    let deeper = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let message = refusal(&format!("clusters:\n  a: {{x: {deeper}}}\n"));
    assert!(
        message.ends_with(
            "recursion limit exceeded: a policy's YAML or JSON nests at most 128 levels"
        ),
        "{message}"
    );
    let json = format!("{{\"clusters\": {{\"a\": {{\"x\": {deeper}}}}}}}");
    let message = refusal(&json);
    assert!(message.ends_with("nests at most 128 levels"), "{message}");
}

#[test]
fn an_oversized_document_is_refused_before_parsing() {
    let text = format!("{INVENTORY}# {}\n", "x".repeat(3 << 20));
    let message = refusal(&text);
    assert!(
        message.starts_with("policy: the document is 3145"),
        "{message}"
    );
    assert!(
        message.contains("over the limit of 2097152 bytes"),
        "{message}"
    );
}

#[test]
fn yaml_aliases_cannot_multiply_a_small_document() {
    // Each attribute refers nine times to the one before: 9^9 values from 1 KB.
    let mut text = String::from("clusters:\n  c:\n    a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        text += &format!(
            "    a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        );
    }
    let message = refusal(&text);
    assert!(message.contains("repetition limit exceeded"), "{message}");
}
