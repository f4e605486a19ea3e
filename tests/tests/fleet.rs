//! The fleet manifests (deploy/istio/, deploy/envoy-gateway/) as a
//! Kubernetes API server would check them, offline: against the CRDs'
//! OpenAPI v3 schemas kept in ../shared/k8s-crds (JSON Schema, no field the
//! schema does not know, and the CRDs' CEL validation rules evaluated); and
//! as celroute would run them: the policy they carry loads and decides in
//! the real filter, and the routes match the policy's inventory.

// Test helpers may fail loudly: a failure here is a failed test.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use celroute_tests::repo_root;
use policy_host::request::RequestSpec;
use policy_host::vm::FilterModule;
use serde_json::Value;

fn shared_crd(file: &str) -> PathBuf {
    let path = repo_root().join("../shared/k8s-crds").join(file);
    assert!(
        path.is_file(),
        "{} is missing: the CRD schemas are kept in ../shared/k8s-crds beside the repository",
        path.display()
    );
    path
}

fn yaml_documents(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.split("\n---")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// The CRD's group, kind and, per served version, its schema.
struct Crd {
    group: String,
    kind: String,
    versions: Vec<(String, Value)>,
}

fn crd(file: &str) -> Crd {
    let doc = yaml_documents(&shared_crd(file)).remove(0);
    let spec = &doc["spec"];
    Crd {
        group: spec["group"].as_str().unwrap_or_default().to_string(),
        kind: spec["names"]["kind"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        versions: spec["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_string(),
                    v["schema"]["openAPIV3Schema"].clone(),
                )
            })
            .collect(),
    }
}

/// Everything wrong with `object` as an instance of `crd`.
fn check_against(crd: &Crd, object: &Value) -> Vec<String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let Some((group, version)) = api_version.split_once('/') else {
        return vec![format!("apiVersion '{api_version}' has no group")];
    };
    if group != crd.group || object["kind"] != crd.kind.as_str() {
        return vec![format!(
            "{api_version} {} is not a {}/{}",
            object["kind"], crd.group, crd.kind
        )];
    }
    let Some((_, schema)) = crd.versions.iter().find(|(v, _)| v == version) else {
        return vec![format!("version '{version}' is not served by the CRD")];
    };
    let validator = jsonschema::validator_for(schema).expect("the CRD schema compiles");
    let mut problems: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    walk(schema, object, "", &mut problems);
    problems
}

/// Fields the schema does not know (an API server would drop them
/// silently), and the CEL rules (`x-kubernetes-validations`) of every node
/// present.
fn walk(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for rule in rules {
            let source = rule["rule"].as_str().unwrap_or_default();
            match evaluate_rule(source, value) {
                Ok(true) => {}
                Ok(false) => problems.push(format!(
                    "{path}: {} (rule: {source})",
                    rule["message"].as_str().unwrap_or("validation rule failed")
                )),
                Err(e) => problems.push(format!("{path}: rule {source} cannot be evaluated: {e}")),
            }
        }
    }
    match value {
        Value::Object(fields) => {
            if schema["x-kubernetes-preserve-unknown-fields"] == true {
                return;
            }
            for (name, field) in fields {
                let at = format!("{path}/{name}");
                // Every object has these; the API server checks them itself.
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
                    continue;
                }
                if let Some(property) = schema["properties"].get(name) {
                    walk(property, field, &at, problems);
                } else if schema["additionalProperties"].is_object() {
                    walk(&schema["additionalProperties"], field, &at, problems);
                } else if schema["properties"].is_object() {
                    problems.push(format!(
                        "{at}: unknown field (the API server would drop it)"
                    ));
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(&schema["items"], item, &format!("{path}/{i}"), problems);
            }
        }
        _ => {}
    }
}

/// One CEL rule with `self` bound to the node, and the Kubernetes URL
/// functions the CRDs use (`isURL`, `url(...).getScheme()`).
fn evaluate_rule(source: &str, node: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(source).map_err(|e| e.to_string())?;
    let mut context = cel::Context::default();
    context.add_variable_from_value("self", cel::to_value(node).map_err(|e| e.to_string())?);
    context
        .add_function("isURL", |s: Arc<String>| url_scheme(&s).is_some())
        .map_err(|e| e.to_string())?;
    context
        .add_function("url", |s: Arc<String>| s)
        .map_err(|e| e.to_string())?;
    context
        .add_function(
            "getScheme",
            |cel::extractors::This(s): cel::extractors::This<Arc<String>>| {
                url_scheme(&s).unwrap_or_default()
            },
        )
        .map_err(|e| e.to_string())?;
    match program.execute(&context) {
        Ok(cel::Value::Bool(ok)) => Ok(ok),
        Ok(other) => Err(format!("not a bool: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// An absolute URL's scheme (RFC 3986: a letter, then letters, digits, `+`,
/// `-`, `.`, then `:` and an authority or path); `None` for anything else.
fn url_scheme(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next()?.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
        && !rest.contains(char::is_whitespace);
    valid.then(|| scheme.to_ascii_lowercase())
}

fn manifest(path: &str) -> Value {
    yaml_documents(&repo_root().join(path)).remove(0)
}

fn wasm() -> FilterModule {
    FilterModule::load(&repo_root().join("target/wasm32-wasip1/release/celroute.wasm"))
        .expect("celroute.wasm (make wasm)")
}

/// The policy as the mesh hands it to the filter (JSON), loaded in the real
/// filter; the cluster an EU and a US user get.
fn decide(policy: &Value) -> (String, String) {
    let module = wasm();
    let json = serde_json::to_string(policy).expect("json");
    let mut vm = module
        .start(json.as_bytes())
        .unwrap_or_else(|e| panic!("the filter refused the manifest's policy: {e:?}"));
    let mut cluster_for = |region: &str| {
        let spec: RequestSpec =
            serde_json::from_value(serde_json::json!({"headers": {"x-user-region": region}}))
                .expect("spec");
        let record = vm.request(&spec).expect("no fault");
        record
            .upstream_cluster
            .unwrap_or_else(|| panic!("not routed: {:?}", record.local_response))
    };
    (cluster_for("eu"), cluster_for("us"))
}

fn inventory(policy: &Value) -> BTreeSet<String> {
    policy["clusters"]
        .as_object()
        .expect("clusters")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn the_istio_wasmplugin_is_valid_and_its_policy_runs() {
    let crd = crd("istio-wasmplugin.yaml");
    let plugin = manifest("deploy/istio/wasmplugin.yaml");
    let problems = check_against(&crd, &plugin);
    assert!(problems.is_empty(), "WasmPlugin: {problems:#?}");
    assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
    assert!(plugin["spec"]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("oci://")));

    let policy = &plugin["spec"]["pluginConfig"];
    let (eu, us) = decide(policy);
    assert_eq!(eu, "outbound|8000||onprem-fra.inference.svc.cluster.local");
    assert_eq!(us, "outbound|8000||onprem-fra.inference.svc.cluster.local");

    // Every cluster of the policy has its route, to the service its name names.
    let service = manifest("deploy/istio/virtualservice.yaml");
    let mut routed = BTreeSet::new();
    for route in service["spec"]["http"].as_array().expect("http routes") {
        let Some(value) = route["match"][0]["headers"]["x-celroute-cluster"]["exact"].as_str()
        else {
            assert_eq!(route["directResponse"]["status"], 503, "{route}");
            continue;
        };
        let host = route["route"][0]["destination"]["host"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(value, format!("outbound|8000||{host}"), "{route}");
        routed.insert(value.to_string());
    }
    assert_eq!(routed, inventory(policy));
}

#[test]
fn the_envoy_gateway_policy_is_valid_and_its_policy_runs() {
    let crd = crd("envoy-gateway-envoyextensionpolicy.yaml");
    let policy_object = manifest("deploy/envoy-gateway/envoyextensionpolicy.yaml");
    let problems = check_against(&crd, &policy_object);
    assert!(problems.is_empty(), "EnvoyExtensionPolicy: {problems:#?}");
    let wasm = &policy_object["spec"]["wasm"][0];
    assert_eq!(wasm["failOpen"], false);
    assert_eq!(wasm["code"]["type"], "Image");

    let policy = &wasm["config"];
    let (eu, us) = decide(policy);
    assert_eq!(eu, "httproute/inference/inference/rule/0");
    assert_eq!(us, "httproute/inference/inference/rule/0");

    // Rule N of the route matches the header value naming rule N.
    let route = manifest("deploy/envoy-gateway/httproute.yaml");
    let mut routed = BTreeSet::new();
    for (i, rule) in route["spec"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .enumerate()
    {
        let value = rule["matches"][0]["headers"][0]["value"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            value,
            format!("httproute/inference/inference/rule/{i}"),
            "{rule}"
        );
        assert_eq!(
            policy["clusters"][value]["cloud"], rule["backendRefs"][0]["name"],
            "rule {i} serves the cloud the policy names"
        );
        routed.insert(value.to_string());
    }
    assert_eq!(routed, inventory(policy));
}

#[test]
fn the_checks_catch_what_an_api_server_would_refuse() {
    let crd = crd("istio-wasmplugin.yaml");
    let mut plugin = manifest("deploy/istio/wasmplugin.yaml");
    plugin["spec"]["failStrategy"] = "FAIL_SOMETIMES".into();
    plugin["spec"]["pluginConfg"] = serde_json::json!({});
    plugin["spec"]["url"] = "ftp://registry.example.com/celroute".into();
    plugin["spec"]["targetRefs"] = serde_json::json!([{"kind": "Gateway", "name": "g"}]);
    let problems = check_against(&crd, &plugin).join("\n");
    assert!(problems.contains("FAIL_SOMETIMES"), "{problems}");
    assert!(
        problems.contains("/spec/pluginConfg: unknown field"),
        "{problems}"
    );
    assert!(
        problems.contains("url must have schema one of"),
        "{problems}"
    );
    assert!(
        problems.contains("only one of targetRefs or selector"),
        "{problems}"
    );

    let crd = crd_eg();
    let mut policy = manifest("deploy/envoy-gateway/envoyextensionpolicy.yaml");
    policy["spec"]["wasm"][0]["code"]["type"] = "HTTP".into();
    let problems = check_against(&crd, &policy).join("\n");
    assert!(
        problems.contains("If type is HTTP, http field needs to be set"),
        "{problems}"
    );
}

fn crd_eg() -> Crd {
    crd("envoy-gateway-envoyextensionpolicy.yaml")
}

#[test]
fn url_schemes_as_kubernetes_reads_them() {
    assert_eq!(
        url_scheme("oci://r.example.com/x:1").as_deref(),
        Some("oci")
    );
    assert_eq!(url_scheme("file:///opt/x.wasm").as_deref(), Some("file"));
    assert_eq!(url_scheme("registry.example.com/x"), None);
    assert_eq!(url_scheme("1http://x"), None);
}
