//! Native decision time of the engine for the benchmark's 5-, 20- and
//! 100-rule policies (residency constraints, tenant denials, model
//! preferences, task rules with cost ordering; see `celroute_tests::bench`),
//! with a fresh request every iteration: with the decision cache (600
//! distinct requests in turn, as traffic repeats tenants, models and tasks)
//! and without it (every decision evaluated).
//!
//! `cargo bench -p celroute --bench decide` (`make bench-native`)

// A policy that fails to load is a broken benchmark: fail loudly.
#![allow(clippy::panic)]

use std::hint::black_box;

use celroute::engine::testing::TestHost;
use celroute::engine::{Policy, Router};
use celroute_tests::bench::policy_yaml;
use criterion::{criterion_group, criterion_main, Criterion};

fn request(i: u64) -> TestHost {
    let mut headers = vec![(
        "x-tenant".to_string(),
        format!("tenant-{}", i % 50).into_bytes(),
    )];
    if i % 2 == 0 {
        headers.push(("x-user-region".into(), b"eu".to_vec()));
    }
    headers.push(("x-model".into(), format!("model-{}", i % 40).into_bytes()));
    headers.push(("x-task".into(), format!("task-{}", i % 60).into_bytes()));
    TestHost::with_header_bytes(headers)
        .property("request.path", b"/v1/chat/completions")
        .property("request.url_path", b"/v1/chat/completions")
        .quiet()
}

fn decide(c: &mut Criterion) {
    for (cache, label) in [(None, "cached"), (Some(0), "uncached")] {
        for rules in [5, 20, 100] {
            bench_policy(c, rules, cache, label);
        }
    }
}

fn bench_policy(c: &mut Criterion, rules: usize, cache: Option<usize>, label: &str) {
    let router = match Policy::load(&policy_yaml(rules, cache)) {
        Ok(p) => Router::new(p),
        Err(e) => panic!("the {rules}-rule policy must load: {e}"),
    };
    let mut i = 0u64;
    c.bench_function(&format!("decide/{rules}-rules/{label}"), |b| {
        b.iter(|| {
            i += 1;
            let mut host = request(i);
            black_box(router.decide(&mut host, false))
        })
    });
}

criterion_group!(benches, decide);
criterion_main!(benches);
