//! Native decision time of the engine for realistic 5-, 20- and 100-rule
//! policies (residency constraints, tenant denials, task and model
//! preferences, cost ordering), with a fresh request every iteration.
//!
//! `cargo bench -p celroute --bench decide`

// A policy that fails to load is a broken benchmark: fail loudly.
#![allow(clippy::panic)]

use std::hint::black_box;

use celroute::engine::{AttributeHost, Policy};
use criterion::{criterion_group, criterion_main, Criterion};

/// A realistic policy with `rules` rules over eight clusters.
pub fn policy(rules: usize) -> String {
    let mut text = String::from("clusters:\n");
    let regions = [
        ("us", "us-east-1"),
        ("eu", "europe-west4"),
        ("eu", "westeurope"),
        ("eu", "fra"),
    ];
    for i in 0..8 {
        let (jurisdiction, region) = regions[i % regions.len()];
        text.push_str(&format!(
            "  cluster-{i}: {{jurisdiction: {jurisdiction}, region: {region}, price_per_1k_tokens: {:.2}, gpu: {}, tasks: [chat, {}]}}\n",
            0.1 + (i as f64) * 0.07,
            if i % 2 == 0 { "h100" } else { "a100" },
            if i % 3 == 0 { "reasoning" } else { "embeddings" },
        ));
    }
    text.push_str("rules:\n");
    text.push_str("  - name: eu-residency\n    when: request.headers[?'x-user-region'].orValue('') == 'eu'\n    require: cluster.jurisdiction == 'eu'\n");
    text.push_str("  - name: tenant-required\n    when: \"!('x-tenant' in request.headers)\"\n    deny: {status: 403, message: tenant required}\n");
    let mut n = 2;
    while n < rules - 1 {
        let i = n;
        match i % 3 {
            0 => text.push_str(&format!(
                "  - name: blocked-tenant-{i}\n    when: request.headers[?'x-tenant'].orValue('') == 'blocked-{i}'\n    deny: {{status: 403, message: tenant {i} is blocked}}\n"
            )),
            1 => text.push_str(&format!(
                "  - name: model-{i}\n    when: request.headers[?'x-model'].orValue('').startsWith('model-{i}')\n    prefer: [cluster-{}, cluster-{}]\n",
                i % 8,
                (i + 3) % 8
            )),
            _ => text.push_str(&format!(
                "  - name: task-{i}\n    when: request.headers[?'x-task'].orValue('') == 'task-{i}' && request.url_path.startsWith('/v1/')\n    order_by: cluster.price_per_1k_tokens\n"
            )),
        }
        n += 1;
    }
    text.push_str(
        "  - name: cheapest\n    order_by: cluster.price_per_1k_tokens\ndefault: cluster-0\n",
    );
    text
}

struct Request {
    headers: Vec<(String, Vec<u8>)>,
    path: Vec<u8>,
}

impl AttributeHost for Request {
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)> {
        self.headers.clone()
    }
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>> {
        match path {
            ["request", "url_path"] | ["request", "path"] => Some(self.path.clone()),
            _ => None,
        }
    }
}

fn request(i: u64) -> Request {
    let mut headers = vec![(
        "x-tenant".to_string(),
        format!("tenant-{}", i % 50).into_bytes(),
    )];
    if i % 2 == 0 {
        headers.push(("x-user-region".into(), b"eu".to_vec()));
    }
    headers.push(("x-model".into(), format!("model-{}", i % 40).into_bytes()));
    headers.push(("x-task".into(), format!("task-{}", i % 60).into_bytes()));
    Request {
        headers,
        path: b"/v1/chat/completions".to_vec(),
    }
}

fn decide(c: &mut Criterion) {
    for rules in [5, 20, 100] {
        let policy = match Policy::load(&policy(rules)) {
            Ok(p) => p,
            Err(e) => panic!("the {rules}-rule policy must load: {e}"),
        };
        let mut i = 0u64;
        c.bench_function(&format!("decide/{rules}-rules"), |b| {
            b.iter(|| {
                i += 1;
                let mut host = request(i);
                black_box(policy.decide(&mut host, false))
            })
        });
    }
}

criterion_group!(benches, decide);
criterion_main!(benches);
