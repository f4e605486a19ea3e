//! The inventory: each cluster's attributes converted once, at load, to the
//! values CEL reads as `cluster` and `clusters`, and what the cost estimate
//! knows of their sizes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;

use super::cost::{self, Bound};
use super::document::PolicyDocument;
use super::error::PolicyError;

pub(crate) fn compile_clusters(
    document: &PolicyDocument,
    errors: &mut Vec<PolicyError>,
) -> (Vec<(String, Value)>, BTreeSet<String>) {
    let mut clusters = Vec::new();
    let mut fields = BTreeSet::from(["name".to_string()]);
    if document.clusters.is_empty() {
        errors.push(PolicyError::new(
            "clusters",
            "the inventory lists no cluster",
        ));
    }
    for (name, attributes) in &document.clusters {
        let at = format!("clusters.{name}");
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            errors.push(PolicyError::new(
                at.clone(),
                "a cluster name is a non-empty Envoy cluster name without spaces",
            ));
        }
        let mut map: HashMap<Key, Value> = HashMap::new();
        for (field, value) in attributes {
            if field == "name" {
                errors.push(PolicyError::new(
                    format!("{at}.name"),
                    "'name' is set by celroute to the cluster's name; choose another attribute name",
                ));
                continue;
            }
            if field == super::live::LIVE {
                errors.push(PolicyError::new(
                    format!("{at}.{field}"),
                    "'live' holds the cluster's live state (cluster.live); choose another attribute name",
                ));
                continue;
            }
            fields.insert(field.clone());
            map.insert(Key::String(Arc::new(field.clone())), json_to_cel(value));
        }
        map.insert(
            Key::String(Arc::new("name".to_string())),
            Value::String(Arc::new(name.clone())),
        );
        clusters.push((name.clone(), Value::Map(Map { map: Arc::new(map) })));
    }
    (clusters, fields)
}

/// The inventory as CEL's `clusters`: name -> attributes.
pub(crate) fn clusters_map(clusters: &[(String, Value)]) -> Value {
    Value::Map(Map {
        map: Arc::new(
            clusters
                .iter()
                .map(|(name, value)| (Key::String(Arc::new(name.clone())), value.clone()))
                .collect(),
        ),
    })
}

/// What the cost estimate knows of the inventory: the size of each field.
pub(crate) fn cost_inventory(clusters: &[(String, Value)]) -> cost::Inventory {
    let mut fields: HashMap<String, Bound> = HashMap::new();
    let mut cluster = Bound::default();
    for (_, value) in clusters {
        cluster = cluster.max(Bound::of(value));
        if let Value::Map(map) = value {
            for (key, field) in map.map.iter() {
                if let Key::String(name) = key {
                    let bound = fields.entry(name.to_string()).or_default();
                    *bound = bound.max(Bound::of(field));
                }
            }
        }
    }
    cost::Inventory {
        fields,
        cluster,
        // The bound of `clusters_map(clusters)`, without building it again.
        clusters: Bound::container(
            clusters.len() as u64,
            clusters
                .iter()
                .map(|(name, _)| Bound::string(name.len() as u64))
                .fold(cluster, Bound::max),
        ),
    }
}

/// A CEL value in the interpreter's own representation.
/// A CEL number (int, uint or double) as a double; `None` for anything else.
pub(crate) fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

pub(crate) fn to_val(value: Value) -> Box<dyn cel::common::value::Val> {
    // Inventory values are built from JSON: null, bool, numbers, strings,
    // lists and maps with string keys, all of which convert.
    Box::<dyn cel::common::value::Val>::try_from(value)
        .unwrap_or_else(|_| Box::new(cel::common::types::CelNull))
}

pub(crate) fn json_to_cel(value: &serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) => Value::Float(f),
            _ => Value::Null,
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(items) => {
            Value::List(Arc::new(items.iter().map(json_to_cel).collect()))
        }
        serde_json::Value::Object(fields) => Value::Map(Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clusters_bound_is_that_of_the_clusters_map() {
        let cluster = |json: serde_json::Value| json_to_cel(&json);
        let clusters = vec![
            (
                "a-rather-long-cluster-name".to_string(),
                cluster(serde_json::json!({"tags": ["x", "y", "z"], "n": 1})),
            ),
            (
                "b".to_string(),
                cluster(
                    serde_json::json!({"deep": {"list": [[1, 2, 3, 4, 5]]}, "s": "long string value"}),
                ),
            ),
        ];
        assert_eq!(
            cost_inventory(&clusters).clusters,
            Bound::of(&clusters_map(&clusters))
        );
    }
}
