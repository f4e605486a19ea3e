//! Hot reload through ECDS: real Envoy with `envoy/envoy-ecds.yaml`, policies
//! published by policy-host into the watched directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use celroute_tests::ecds::{
    self, policy_to, publish_options, write_policy, Live, Load, FAILURES, RELOADS,
};
use celroute_tests::envoy::wasm;
use celroute_tests::http::Connection;
use celroute_tests::Stack;
use policy_host::publish::{ecds_resource, publish, write_atomically, PublishOptions};
use policy_host::vm::FilterModule;

fn options(to: &Path) -> PublishOptions {
    publish_options(to).unwrap()
}

fn cloud_of(connection: &mut Connection) -> String {
    ecds::cloud_of(connection).expect("a cloud answered")
}

#[test]
fn a_published_policy_decides_the_next_request_on_open_and_new_connections() {
    let live = Live::start(&policy_to("aws-us-east-1")).unwrap();
    let mut kept = Connection::open(live.envoy().listener).unwrap();
    assert_eq!(cloud_of(&mut kept), "aws-us-east-1");

    let before = live.envoy().stat(RELOADS).unwrap();
    live.publish("second.yaml", &policy_to("azure-westeurope"))
        .unwrap();
    live.wait_for(RELOADS, before).unwrap();
    assert_eq!(
        cloud_of(&mut kept),
        "azure-westeurope",
        "same keep-alive connection"
    );
    let mut fresh = Connection::open(live.envoy().listener).unwrap();
    assert_eq!(cloud_of(&mut fresh), "azure-westeurope", "new connection");

    // The filter says which policy is live.
    let reply = fresh.send("GET", "/", &[], b"").unwrap();
    let version = celroute::engine::content_version(&policy_to("azure-westeurope"));
    let decision = reply.header("x-celroute-decision").unwrap();
    assert!(
        decision.contains(&format!("policy={version}")),
        "{decision}"
    );
    let gauge = live
        .envoy()
        .stat("wasmcustom.celroute.policy_version")
        .unwrap();
    assert_eq!(format!("{gauge:012x}"), version);
    assert!(
        live.envoy()
            .stat("wasmcustom.celroute.configurations_accepted")
            .unwrap()
            >= 2
    );
    let loaded = format!("loaded policy 'to-azure-westeurope' version {version}");
    assert!(
        live.envoy().log_shows(&loaded, Duration::from_secs(5)),
        "no '{loaded}' in the log:\n{}",
        live.envoy().log_text()
    );
}

#[test]
fn a_bad_policy_pushed_around_the_validator_is_rejected_and_the_old_one_keeps_deciding() {
    let live = Live::start(&policy_to("aws-us-east-1")).unwrap();
    let mut kept = Connection::open(live.envoy().listener).unwrap();
    assert_eq!(cloud_of(&mut kept), "aws-us-east-1");

    let before = live.envoy().stat(FAILURES).unwrap();
    let bad =
        policy_to("azure-westeurope").replace("prefer: [azure-westeurope]", "prefer: [azure-west]");
    let resource = ecds_resource("celroute", &wasm().unwrap(), &bad, "bad");
    write_atomically(&live.dir.path().join("celroute.yaml"), resource.as_bytes()).unwrap();
    live.wait_for(FAILURES, before).unwrap();

    assert_eq!(cloud_of(&mut kept), "aws-us-east-1");
    let mut fresh = Connection::open(live.envoy().listener).unwrap();
    assert_eq!(cloud_of(&mut fresh), "aws-us-east-1");
    assert!(
        live.envoy()
            .stat("wasmcustom.celroute.configurations_rejected")
            .unwrap()
            >= 1
    );
    let log = live.envoy().log_text();
    assert!(
        log.contains("policy rejected, the previous configuration stays in force: rule 'to-azure-westeurope' (rules[0]): prefer: unknown cluster 'azure-west'"),
        "{log}"
    );
}

#[test]
fn republishing_every_100ms_under_load_fails_no_request() {
    let live = Live::start(&policy_to("aws-us-east-1")).unwrap();
    let allowed = ["aws-us-east-1", "azure-westeurope"];
    let seen = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let counted = seen.clone();
    let load = Load::start(live.envoy().listener, 4, move |reply| {
        if reply.status != 200 {
            return Some(format!("{} {}", reply.status, reply.body));
        }
        let cloud = reply.cloud().unwrap_or("none").to_string();
        *counted.lock().unwrap().entry(cloud.clone()).or_default() += 1;
        (!allowed.contains(&cloud.as_str())).then(|| format!("served by {cloud}"))
    });

    let started = Instant::now();
    let mut publishes = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let target = allowed[publishes % 2];
        live.publish(&format!("p{publishes}.yaml"), &policy_to(target))
            .unwrap();
        publishes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load.stop();
    let seen = seen.lock().unwrap();
    println!(
        "load: {} requests in 10 s over 4 keep-alive connections, {publishes} publishes, clouds {seen:?}",
        report.total
    );
    report.check(2000).unwrap();
    assert!(publishes >= 50);
    assert!(seen.len() == 2, "both policies decided requests: {seen:?}");
    assert!(
        live.envoy().stat(RELOADS).unwrap() >= 20,
        "Envoy applied the reloads"
    );
}

#[test]
fn a_bad_policy_at_first_start_fails_requests_and_never_honours_a_client_cluster() {
    let module = FilterModule::load(&wasm().unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = "clusters: {aws-us-east-1: {}}\nrules:\n  - {name: r, prefer: [aws-us-east-2]}\n";
    let resource = ecds_resource("celroute", &wasm().unwrap(), bad, "bad");
    write_atomically(&dir.path().join("celroute.yaml"), resource.as_bytes()).unwrap();
    let stack = Stack::start_from("envoy-ecds.yaml", |c| c.with_ecds_dir(dir.path()))
        .expect("Envoy starts");
    let mut connection = Connection::open(stack.envoy.listener).unwrap();
    let reply = connection
        .send("GET", "/", &[("x-celroute-cluster", b"aws-us-east-1")], b"")
        .unwrap();
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert_eq!(
        reply.cloud(),
        None,
        "no cloud is reached, whatever the client names"
    );
    assert_eq!(
        stack
            .envoy
            .stat("extension_config_discovery.http_filter.celroute.update_rejected")
            .unwrap(),
        1
    );

    // A good policy then goes live without a restart.
    let policies = tempfile::tempdir().unwrap();
    let path = write_policy(policies.path(), "good.yaml", &policy_to("azure-westeurope")).unwrap();
    let before = stack.envoy.stat(RELOADS).unwrap();
    publish(&module, &path, &options(dir.path())).expect("publish");
    let start = Instant::now();
    while stack.envoy.stat(RELOADS).unwrap() <= before && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut fresh = Connection::open(stack.envoy.listener).unwrap();
    assert_eq!(cloud_of(&mut fresh), "azure-westeurope");
}
