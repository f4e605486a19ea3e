//! The README's minimal policy loads in the real filter and decides as its
//! comments say.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use celroute_tests::envoy::wasm;
use celroute_tests::repo_root;
use policy_host::policy::LoadedPolicy;
use policy_host::request::RequestSpec;
use policy_host::vm::FilterModule;

/// The first ```yaml block after `heading` in the README.
fn yaml_after(heading: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let (_, after) = readme.split_once(heading).expect("heading");
    let (_, block) = after.split_once("```yaml\n").expect("yaml block");
    block.split_once("```").expect("end of block").0.to_string()
}

#[test]
fn the_readme_minimal_policy_loads_and_decides() {
    let policy = yaml_after("## A minimal policy");
    let module = FilterModule::load(&wasm().unwrap()).unwrap();
    let mut loaded = LoadedPolicy::load(&module, policy.as_bytes()).expect("the policy loads");
    let decide = |loaded: &mut LoadedPolicy<'_>, region: &str| {
        let spec: RequestSpec =
            serde_yaml::from_str(&format!("{{headers: {{x-user-region: {region}}}}}")).unwrap();
        let decision = loaded.evaluate(&spec).unwrap().decision;
        (decision.cluster().map(str::to_string), decision.rule)
    };
    assert_eq!(
        decide(&mut loaded, "eu"),
        (Some("onprem-fra".into()), "cheapest".into())
    );
    assert_eq!(
        decide(&mut loaded, "us"),
        (Some("aws-us-east-1".into()), "cheapest".into())
    );
}

/// The table of live fields in docs/live-signals.md is the filter's catalog.
#[test]
fn the_live_fields_table_is_the_filters_catalog() {
    let text = std::fs::read_to_string(celroute_tests::repo_root().join("docs/live-signals.md"))
        .expect("docs/live-signals.md");
    let start = text.find("<!-- live-fields").expect("live-fields marker");
    let end = text.find("<!-- /live-fields -->").expect("end marker");
    let rows: Vec<(String, String, String)> = text[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].trim_matches('`').to_string(),
                cells[1].to_string(),
                cells[2].to_string(),
            )
        })
        .collect();
    let catalog: Vec<(String, String, String)> = celroute::engine::BUILTIN_FIELDS
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(rows, catalog);
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(celroute_tests::repo_root().join("docs/signals-feed.schema.json"))
            .expect("schema"),
    )
    .expect("the schema is JSON");
    let observed =
        &schema["properties"]["clusters"]["additionalProperties"]["propertyNames"]["not"]["enum"];
    assert_eq!(
        observed.as_array().map(|a| a.len()),
        Some(celroute::signals::feed::OBSERVED.len())
    );
}
