//! A live-signals stack for tests: Envoy with controlled simulated clouds
//! and a signals feed, bounded load with EU users, and what to check of it.

// Test helpers may fail loudly: a failure here is a failed test.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;

use crate::clouds::{Cloud, Feed};
use crate::envoy::{Config, Envoy};
use crate::load::{self, Sample};
use crate::start_controlled_clouds;

/// An EU user's request headers.
pub const EU: [(&str, &str); 2] = [("x-user-region", "eu"), ("x-tenant", "acme")];

/// Envoy, the clouds and the feed; Envoy stops first.
pub struct LiveStack {
    pub envoy: Envoy,
    pub clouds: BTreeMap<String, Cloud>,
    pub feed: Feed,
    /// The configuration Envoy runs, for a restart.
    pub config: Config,
    _runtime: tokio::runtime::Runtime,
}

impl LiveStack {
    pub fn start(policy: &str, edit: impl FnOnce(Config) -> Result<Config>) -> LiveStack {
        LiveStack::start_from("envoy-live.yaml", |c| c.with_policy(policy).and_then(edit))
    }

    pub fn start_from(config: &str, edit: impl FnOnce(Config) -> Result<Config>) -> LiveStack {
        let (runtime, clouds, feed) = start_controlled_clouds().expect("clouds start");
        let mut addresses: BTreeMap<String, SocketAddr> =
            clouds.iter().map(|(n, c)| (n.clone(), c.address)).collect();
        addresses.insert("signals".into(), feed.address);
        let config = Config::shipped(config, &addresses)
            .and_then(edit)
            .expect("config");
        let envoy = Envoy::start(&config).expect("Envoy starts");
        LiveStack {
            envoy,
            clouds,
            feed,
            config,
            _runtime: runtime,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.envoy.listener
    }

    pub fn cloud(&self, name: &str) -> &Cloud {
        &self.clouds[name]
    }

    pub fn load(&self, seconds: f64) -> Vec<Sample> {
        load::run(
            self.address(),
            4,
            Duration::from_secs_f64(seconds),
            Duration::from_millis(4),
            &EU,
        )
    }

    /// Stops Envoy and starts it again with the same configuration.
    pub fn restart(&mut self) {
        self.envoy.stop();
        self.envoy = Envoy::start(&self.config).expect("Envoy restarts");
    }

    pub fn assert_no_panic(&self) {
        let log = self.envoy.log_text();
        assert!(!log.contains("panicked"), "the filter panicked:\n{log}");
        assert_eq!(self.envoy.stat("wasm.celroute.vm_reload").unwrap_or(0), 0);
    }
}

/// Removes the route's retry policy.
pub fn without_retries(mut config: Config) -> Result<Config> {
    let route = &mut config.yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
    let serde_yaml::Value::Mapping(route) = route else {
        anyhow::bail!("no route in envoy-live.yaml")
    };
    route
        .remove("retry_policy")
        .ok_or_else(|| anyhow::anyhow!("no retry_policy"))?;
    Ok(config)
}

pub fn residency_held(samples: &[Sample]) {
    let outside: Vec<_> = samples
        .iter()
        .filter(|s| s.cloud.as_deref() == Some("aws-us-east-1"))
        .collect();
    assert!(
        outside.is_empty(),
        "EU requests reached aws-us-east-1: {outside:?}"
    );
}

/// Per 250 ms from the kill: replies per cloud (or status).
pub fn timeline(samples: &[Sample], from: u64) -> String {
    let mut buckets: BTreeMap<i64, BTreeMap<String, usize>> = BTreeMap::new();
    for s in samples {
        let bucket = (s.at_ms as i64 - from as i64).div_euclid(250) * 250;
        let key = s.cloud.clone().unwrap_or_else(|| {
            format!(
                "status {} {}",
                s.status,
                s.detail.as_deref().unwrap_or_default()
            )
        });
        *buckets.entry(bucket).or_default().entry(key).or_default() += 1;
    }
    buckets
        .iter()
        .map(|(t, counts)| format!("{t:>6} ms {counts:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replies per cloud in `samples`, for messages.
pub fn shares(samples: &[Sample]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        let key = s.cloud.clone().unwrap_or_else(|| {
            format!(
                "status {} {}",
                s.status,
                s.detail.as_deref().unwrap_or_default()
            )
        });
        *counts.entry(key).or_default() += 1;
    }
    format!("{counts:?}")
}
