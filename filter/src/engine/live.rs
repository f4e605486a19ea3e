//! Live cluster state: values observed while traffic flows (latency, errors,
//! queue depth, prices), read in CEL as `cluster.live.<field>` next to the
//! cluster's inventory attributes.
//!
//! Two rules keep a live value from being used where it has gone stale:
//! - an expression that reads live state is never evaluated at load, even if
//!   it reads no request attribute (see [`Reads`]);
//! - a cached decision is keyed by the epoch of the snapshot it was decided
//!   under, so a new snapshot is never answered from an older one's entry.
//!
//! A value missing from the snapshot is absent: `has(cluster.live.x)` is
//! false and reading it is an evaluation error, so the fail-closed rules of
//! the decision apply and a missing signal never widens where a request goes.
//!
//! The fields a policy may name form a [`LiveFields`] catalog, fixed when the
//! policy compiles; this build has no live source, so its catalog is empty and
//! `cluster.live` is unknown to policies. Tests compile with a catalog of
//! their own to hold both rules before the first source exists.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cel::Value;

/// The attribute of `cluster` that holds its live state.
pub const LIVE: &str = "live";

/// Which expressions' values may change, and when: what an expression reads
/// decides when it may be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reads {
    /// Only the inventory: evaluated once per cluster at load.
    Inventory,
    /// Live cluster state (and perhaps the inventory): evaluated against the
    /// snapshot current when a request is decided.
    Live,
    /// A request attribute (and perhaps anything else): evaluated per request.
    Request,
}

/// The live fields policies may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveFields {
    names: BTreeSet<String>,
}

impl LiveFields {
    /// No live field: what this build's sources provide.
    pub fn none() -> LiveFields {
        LiveFields::default()
    }

    /// A catalog of these field names.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> LiveFields {
        LiveFields {
            names: names.into_iter().map(str::to_string).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + Clone {
        self.names.iter().map(String::as_str)
    }
}

/// Live values observed for clusters, by cluster name and field. Only what is
/// present and fresh belongs in it: whoever builds a snapshot leaves out
/// what is missing or older than its staleness bound.
#[derive(Debug, Clone, Default)]
pub struct LiveSnapshot {
    pub(crate) clusters: HashMap<String, BTreeMap<String, Value>>,
}

impl LiveSnapshot {
    pub fn new() -> LiveSnapshot {
        LiveSnapshot::default()
    }

    /// Sets one live value of one cluster.
    pub fn set(mut self, cluster: &str, field: &str, value: Value) -> LiveSnapshot {
        self.clusters
            .entry(cluster.to_string())
            .or_default()
            .insert(field.to_string(), value);
        self
    }
}
