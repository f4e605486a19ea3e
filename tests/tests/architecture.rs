//! The shape of the code: no module of the engine or of policy-host imports,
//! directly or through others, a module that imports it back. Read from the
//! sources: each top-level module's `use super::X` / `use crate::X` (and
//! `super::X::` paths) outside its `#[cfg(test)]` code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use celroute_tests::repo_root;

/// Top-level module name -> its source files (a folder module's files included).
fn modules(root: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap();
            let top = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if ["lib", "main", "mod"].contains(&top.as_str()) {
                continue;
            }
            out.entry(top).or_default().push(path);
        }
    }
    out
}

/// The modules each module refers to through `prefixes` (`super::`, `crate::`).
fn imports(
    modules: &BTreeMap<String, Vec<PathBuf>>,
    prefixes: &[&str],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, files) in modules {
        let mut uses = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            // Test code may import anything it tests.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for prefix in prefixes {
                for (at, _) in code.match_indices(prefix) {
                    let mut rest = &code[at + prefix.len()..];
                    while let Some(r) = rest.strip_prefix("super::") {
                        rest = r;
                    }
                    let target: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if target != *name && modules.contains_key(&target) {
                        uses.insert(target);
                    }
                }
            }
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// One import cycle, if there is any.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn assert_acyclic(dir: &str, prefixes: &[&str], expected_edge: (&str, &str)) {
    let root = repo_root().join(dir);
    let graph = imports(&modules(&root), prefixes);
    // The reading works: a known import is seen.
    assert!(
        graph
            .get(expected_edge.0)
            .is_some_and(|uses| uses.contains(expected_edge.1)),
        "{dir}: expected {} to import {}: {graph:?}",
        expected_edge.0,
        expected_edge.1
    );
    if let Some(cycle) = cycle(&graph) {
        panic!("{dir}: modules import each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_engine_imports_without_cycles() {
    assert_acyclic(
        "filter/src/engine",
        &["super::", "crate::engine::"],
        ("router", "cache"),
    );
}

#[test]
fn policy_host_imports_without_cycles() {
    assert_acyclic("policy-host/src", &["crate::"], ("vm", "abi"));
}

#[test]
fn a_cycle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
