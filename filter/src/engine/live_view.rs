//! A live snapshot as one policy reads it: built once when the snapshot
//! arrives, so that no request converts a live value.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;

use super::inventory::{clusters_map, to_val};
use super::live::{LiveSnapshot, LIVE};
use super::policy::Policy;

/// A snapshot as one policy reads it: each cluster's inventory value with
/// its `live` map added, converted once when the snapshot arrives, and the
/// epoch the decision cache keys by.
pub(crate) struct LiveView {
    pub(crate) epoch: u64,
    pub(crate) clusters: Vec<Box<dyn cel::common::value::Val>>,
    pub(crate) clusters_value: Box<dyn cel::common::value::Val>,
}

impl LiveView {
    /// The view of `snapshot` for `policy`: fields outside the policy's
    /// catalog, and clusters outside its inventory, are left out.
    pub(crate) fn new(policy: &Policy, snapshot: &LiveSnapshot, epoch: u64) -> LiveView {
        let mut values = Vec::with_capacity(policy.clusters.len());
        for cluster in &policy.clusters {
            let live: HashMap<Key, Value> = snapshot
                .clusters
                .get(&cluster.name)
                .into_iter()
                .flatten()
                .filter(|(field, _)| policy.live_fields.contains(field))
                .map(|(field, value)| (Key::String(Arc::new(field.clone())), value.clone()))
                .collect();
            let mut attributes = match &cluster.attributes {
                Value::Map(map) => (*map.map).clone(),
                _ => HashMap::new(),
            };
            attributes.insert(
                Key::String(Arc::new(LIVE.to_string())),
                Value::Map(Map {
                    map: Arc::new(live),
                }),
            );
            values.push((
                cluster.name.clone(),
                Value::Map(Map {
                    map: Arc::new(attributes),
                }),
            ));
        }
        let clusters_value = to_val(clusters_map(&values));
        LiveView {
            epoch,
            clusters: values.into_iter().map(|(_, v)| to_val(v)).collect(),
            clusters_value,
        }
    }
}
