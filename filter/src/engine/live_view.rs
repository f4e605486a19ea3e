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
    /// Each cluster's live values the policy reads, in inventory order: two
    /// snapshots that agree on them decide alike.
    pub(crate) read: Vec<Vec<(String, Value)>>,
    pub(crate) clusters: Vec<Box<dyn cel::common::value::Val>>,
    pub(crate) clusters_value: Box<dyn cel::common::value::Val>,
}

impl LiveView {
    /// Each cluster's values in `snapshot` that `policy` may read.
    pub(crate) fn read(policy: &Policy, snapshot: &LiveSnapshot) -> Vec<Vec<(String, Value)>> {
        (policy.clusters.iter())
            .map(|cluster| {
                (snapshot.clusters.get(&cluster.name).into_iter().flatten())
                    .filter(|(field, _)| {
                        policy.live_fields.contains(field) && policy.reads_live_field(field)
                    })
                    .map(|(field, value)| (field.clone(), value.clone()))
                    .collect()
            })
            .collect()
    }

    /// The view of `snapshot` for `policy`: fields it does not read, and
    /// clusters outside its inventory, are left out.
    pub(crate) fn new(policy: &Policy, snapshot: &LiveSnapshot, epoch: u64) -> LiveView {
        let read = LiveView::read(policy, snapshot);
        let mut values = Vec::with_capacity(policy.clusters.len());
        for (cluster, fields) in policy.clusters.iter().zip(&read) {
            let live: HashMap<Key, Value> = fields
                .iter()
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
            read,
            clusters: values.into_iter().map(|(_, v)| to_val(v)).collect(),
            clusters_value,
        }
    }
}
