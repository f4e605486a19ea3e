//! Live signals: what the filter observes of each cluster's traffic, what
//! upstreams report (ORCA load headers) and what a signals feed says,
//! aggregated across Envoy's workers and turned into the snapshot policies
//! read as `cluster.live.<field>`.
//!
//! Everything here is plain Rust with the time passed in, so that it is
//! tested natively and fuzzed; `plugin/live.rs` moves it through Envoy's
//! shared data.
//!
//! - `observe.rs`: one worker's observations since its last tick;
//! - `state.rs`: a cluster's aggregated state, as kept in shared data;
//! - `snapshot.rs`: states to the snapshot a policy reads (staleness, breaker);
//! - `orca.rs`: the `endpoint-load-metrics` response header;
//! - `feed.rs`: the signals feed document;
//! - `prometheus.rs`: model servers' `/metrics`, scraped.

pub mod feed;
pub mod observe;
pub mod orca;
pub mod prometheus;
pub mod snapshot;
pub mod state;

pub use feed::{parse_feed, FeedError, FEED_VERSION};
pub use observe::{Completion, Pending, PendingCluster};
pub use orca::{parse_orca, ORCA_FORMAT_HEADER, ORCA_HEADER};
pub use prometheus::parse_metrics;
pub use snapshot::snapshot;
pub use state::{ClusterState, Reported, STATE_KEY_PREFIX, STATE_VERSION};

/// A value reported for a cluster: by an ORCA header, the feed or a test.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Signal {
    Bool(bool),
    Number(f64),
    Text(String),
}

#[cfg(test)]
mod tests;
