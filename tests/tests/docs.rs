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
