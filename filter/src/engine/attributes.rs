//! Request attributes: the Envoy vocabulary policies read (`request.*`,
//! `source.*`, `destination.*`, `connection.*`), and fetching from the host
//! only the ones a compiled policy references.
//!
//! Values arrive as proxy-wasm encodes them: strings as raw bytes, integers as
//! 8-byte little-endian, booleans as one byte, timestamps as nanoseconds since
//! the epoch (8-byte little-endian).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;

/// What the engine asks of the proxy. Implemented by the proxy-wasm adapter in
/// the filter, and by test hosts natively.
pub trait AttributeHost {
    /// The value of one request header (`name` is lower-case), or `None` when absent.
    fn request_header(&mut self, name: &str) -> Option<Vec<u8>>;
    /// Every request header, in arrival order; a name may repeat.
    fn request_headers(&mut self) -> Vec<(String, Vec<u8>)>;
    /// A host property by path, such as `["source", "address"]`.
    fn property(&mut self, path: &[&str]) -> Option<Vec<u8>>;
    /// What this request's key has spent of the budget `name` in its
    /// current window (0 when nothing yet).
    fn budget_spent(&mut self, _name: &str) -> f64 {
        0.0
    }
}

/// How a host property is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Int,
    UInt,
    Bool,
    Timestamp,
    /// `request.headers`: read through the header-map calls, not as a property.
    Headers,
    /// `request.body`: the summary of a JSON body ([`super::body::BodySummary`]),
    /// which the adapter has only once the body is complete.
    Body,
}

/// Every attribute a policy may read: `(root, field, kind)`.
pub(crate) const CATALOG: &[(&str, &str, Kind)] = &[
    ("request", "path", Kind::String),
    ("request", "url_path", Kind::String),
    ("request", "host", Kind::String),
    ("request", "scheme", Kind::String),
    ("request", "method", Kind::String),
    ("request", "headers", Kind::Headers),
    ("request", "referer", Kind::String),
    ("request", "useragent", Kind::String),
    ("request", "id", Kind::String),
    ("request", "protocol", Kind::String),
    ("request", "query", Kind::String),
    ("request", "time", Kind::Timestamp),
    ("request", "body", Kind::Body),
    ("source", "address", Kind::String),
    ("source", "port", Kind::Int),
    ("destination", "address", Kind::String),
    ("destination", "port", Kind::Int),
    ("connection", "id", Kind::UInt),
    ("connection", "mtls", Kind::Bool),
    ("connection", "requested_server_name", Kind::String),
    ("connection", "tls_version", Kind::String),
    ("connection", "subject_local_certificate", Kind::String),
    ("connection", "subject_peer_certificate", Kind::String),
    ("connection", "dns_san_local_certificate", Kind::String),
    ("connection", "dns_san_peer_certificate", Kind::String),
    ("connection", "uri_san_local_certificate", Kind::String),
    ("connection", "uri_san_peer_certificate", Kind::String),
];

/// The attribute roots, in the order [`Attributes`] stores them.
pub(crate) const ROOTS: [&str; 4] = ["request", "source", "destination", "connection"];

pub(crate) fn root_index(root: &str) -> Option<usize> {
    ROOTS.iter().position(|r| *r == root)
}

pub(crate) fn catalog_index(root: &str, field: &str) -> Option<usize> {
    CATALOG
        .iter()
        .position(|(r, f, _)| *r == root && *f == field)
}

pub(crate) fn fields_of(root: &str) -> impl Iterator<Item = &'static str> + '_ {
    CATALOG
        .iter()
        .filter(move |(r, _, _)| *r == root)
        .map(|(_, f, _)| *f)
}

/// Which request headers a policy reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderNeeds {
    /// Only these, each looked up by name (every reference used a literal key).
    Named(BTreeSet<String>),
    /// The whole map (iterated, sized, or indexed by a computed key).
    All,
}

/// The attributes a compiled policy references: the only ones fetched per request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttributeNeeds {
    /// Indices into [`CATALOG`], sorted, without duplicates.
    pub(crate) attributes: BTreeSet<usize>,
    /// Meaningful when `request.headers` is among `attributes`.
    pub(crate) headers: Option<HeaderNeeds>,
    /// The budgets read (`budget.<name>`), with their limits.
    pub(crate) budgets: std::collections::BTreeMap<String, f64>,
}

impl AttributeNeeds {
    /// Whether the policy reads `request.body`: the adapter then holds each
    /// request until its body is complete.
    pub fn reads_body(&self) -> bool {
        catalog_index("request", "body").is_some_and(|i| self.attributes.contains(&i))
    }

    pub(crate) fn add(&mut self, index: usize) {
        self.attributes.insert(index);
    }

    pub(crate) fn add_header(&mut self, name: &str) {
        if let Some(i) = catalog_index("request", "headers") {
            self.attributes.insert(i);
        }
        match &mut self.headers {
            Some(HeaderNeeds::All) => {}
            Some(HeaderNeeds::Named(names)) => {
                names.insert(name.to_string());
            }
            None => self.headers = Some(HeaderNeeds::Named(BTreeSet::from([name.to_string()]))),
        }
    }

    pub(crate) fn add_all_headers(&mut self) {
        if let Some(i) = catalog_index("request", "headers") {
            self.attributes.insert(i);
        }
        self.headers = Some(HeaderNeeds::All);
    }

    /// Which of [`ROOTS`] the policy reads at all: only those are bound per request.
    pub(crate) fn roots(&self) -> [bool; 4] {
        let mut roots = [false; 4];
        for &i in &self.attributes {
            if let Some(r) = root_index(CATALOG[i].0) {
                roots[r] = true;
            }
        }
        roots
    }

    /// The referenced attribute paths, such as `request.headers['x-tenant']`
    /// or `source.address`, for logs and tests.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for &i in &self.attributes {
            let (root, field, kind) = CATALOG[i];
            match (kind, &self.headers) {
                (Kind::Headers, Some(HeaderNeeds::Named(names))) => {
                    out.extend(names.iter().map(|n| format!("{root}.{field}['{n}']")))
                }
                _ => out.push(format!("{root}.{field}")),
            }
        }
        out
    }
}

/// Attributes that differ on (nearly) every request: a policy that reads one
/// of them gets no decision cache, since no two requests would share an entry.
pub(crate) const VOLATILE: &[(&str, &str)] = &[
    ("request", "id"),
    ("request", "time"),
    ("source", "port"),
    ("connection", "id"),
];

impl AttributeNeeds {
    /// Whether decisions may be cached by the values of these attributes:
    /// none is volatile and headers are read by name, not as the whole map.
    pub(crate) fn cacheable(&self) -> bool {
        // Spend changes with every response.
        self.budgets.is_empty()
            && !matches!(self.headers, Some(HeaderNeeds::All))
            && self.attributes.iter().all(|&i| {
                let (root, field, _) = CATALOG[i];
                !VOLATILE.contains(&(root, field))
            })
    }
}

/// The raw values of one request's referenced attributes, as the host gave
/// them: in [`AttributeNeeds`] order, one slot per attribute (one per named
/// header). A decision depends on nothing else, so these bytes are the key of
/// the decision cache.
pub(crate) struct Fetched {
    slots: Vec<Option<Vec<u8>>>,
    /// What was spent of each budget read, in `needs.budgets` order.
    spent: Vec<f64>,
    /// Every header, when the policy reads the whole map.
    all_headers: Option<Vec<(String, Vec<u8>)>>,
}

impl Fetched {
    /// Fetches from `host` exactly the attributes in `needs`.
    pub(crate) fn fetch(host: &mut dyn AttributeHost, needs: &AttributeNeeds) -> Fetched {
        let mut slots = Vec::with_capacity(needs.attributes.len() + 4);
        let mut all_headers = None;
        for &i in &needs.attributes {
            let (root, field, kind) = CATALOG[i];
            match (kind, &needs.headers) {
                (Kind::Headers, Some(HeaderNeeds::Named(names))) => {
                    slots.extend(names.iter().map(|name| host.request_header(name)))
                }
                (Kind::Headers, _) => all_headers = Some(host.request_headers()),
                _ => slots.push(host.property(&[root, field])),
            }
        }
        let spent = needs
            .budgets
            .keys()
            .map(|name| host.budget_spent(name))
            .collect();
        Fetched {
            slots,
            all_headers,
            spent,
        }
    }

    /// Appends the cache key to `key`: each slot as a presence byte, then
    /// length and bytes, so that no two different requests share a key.
    pub(crate) fn key(&self, key: &mut Vec<u8>) {
        for spent in &self.spent {
            key.extend_from_slice(&spent.to_le_bytes());
        }
        for slot in &self.slots {
            match slot {
                None => key.push(0),
                Some(bytes) => {
                    key.push(1);
                    key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    key.extend_from_slice(bytes);
                }
            }
        }
    }

    /// The values read, as a decision record holds them (`null` for an
    /// absent one), less those `log` redacts.
    pub(crate) fn read_values(
        &self,
        needs: &AttributeNeeds,
        redacts: &dyn Fn(&str) -> bool,
    ) -> ReadValues {
        use serde_json::Value as Json;
        let mut read = ReadValues::default();
        let mut slots = self.slots.iter();
        let lossy = |raw: &[u8]| Json::String(String::from_utf8_lossy(raw).into_owned());
        for &i in &needs.attributes {
            let (root, field, kind) = CATALOG[i];
            match (kind, &needs.headers) {
                (Kind::Headers, Some(HeaderNeeds::Named(names))) => {
                    for name in names {
                        let value = slots
                            .next()
                            .and_then(Option::as_deref)
                            .map_or(Json::Null, lossy);
                        read.put(redacts, header_path(name), value);
                    }
                }
                (Kind::Headers, _) => {
                    let mut map = serde_json::Map::new();
                    for (name, raw) in self.all_headers.iter().flatten() {
                        let name = name.to_ascii_lowercase();
                        if redacts(&header_path(&name)) {
                            if !map.contains_key(&name) {
                                read.redacted.push(header_path(&name));
                            }
                            map.insert(name, Json::Null);
                            continue;
                        }
                        map.entry(name).or_insert_with(|| lossy(raw));
                    }
                    map.retain(|_, v| !v.is_null());
                    read.values
                        .insert(format!("{root}.{field}"), Json::Object(map));
                }
                _ => {
                    let raw = slots.next().and_then(Option::as_deref);
                    let value = raw.map_or(Json::Null, |raw| record_value(kind, raw));
                    read.put(redacts, format!("{root}.{field}"), value);
                }
            }
        }
        for ((name, _), spent) in needs.budgets.iter().zip(&self.spent) {
            let spent = serde_json::Number::from_f64(*spent).map_or(Json::Null, Json::Number);
            read.values.insert(format!("budget.{name}"), spent);
        }
        read
    }

    /// The values as CEL sees them.
    pub(crate) fn into_attributes(self, needs: &AttributeNeeds) -> Attributes {
        let mut maps: [HashMap<Key, Value>; 4] = Default::default();
        let mut slots = self.slots.into_iter();
        let mut all_headers = self.all_headers;
        for &i in &needs.attributes {
            let (root, field, kind) = CATALOG[i];
            let value = match (kind, &needs.headers) {
                (Kind::Headers, Some(HeaderNeeds::Named(names))) => {
                    let mut map: HashMap<Key, Value> = HashMap::new();
                    for name in names {
                        if let Some(raw) = slots.next().flatten() {
                            map.insert(Key::String(Arc::new(name.clone())), text(raw));
                        }
                    }
                    Some(Value::Map(Map { map: Arc::new(map) }))
                }
                (Kind::Headers, _) => Some(header_map(all_headers.take().unwrap_or_default())),
                _ => slots.next().flatten().and_then(|raw| decode(kind, raw)),
            };
            if let (Some(value), Some(r)) = (value, root_index(root)) {
                maps[r].insert(Key::String(Arc::new(field.to_string())), value);
            }
        }
        let read: Vec<(String, f64)> = needs.budgets.iter().map(|(n, l)| (n.clone(), *l)).collect();
        Attributes {
            roots: maps.map(|m| Value::Map(Map { map: Arc::new(m) })),
            budget: (!read.is_empty()).then(|| super::spending::budget_value(&read, &self.spent)),
        }
    }
}

/// The record path of one request header: `request.headers['<name>']`.
pub fn header_path(name: &str) -> String {
    format!("request.headers['{name}']")
}

/// The attribute values one decision was made from, as a decision record
/// holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadValues {
    /// Path -> value (`null` when the attribute was read and absent).
    pub values: serde_json::Map<String, serde_json::Value>,
    /// Paths read whose values were redacted.
    pub redacted: Vec<String>,
}

impl ReadValues {
    /// Records `value` at `path`, unless `redacts` keeps it out.
    fn put(&mut self, redacts: &dyn Fn(&str) -> bool, path: String, value: serde_json::Value) {
        if redacts(&path) {
            self.redacted.push(path);
        } else {
            self.values.insert(path, value);
        }
    }
}

/// The attribute values of one request: one CEL map per root, holding only
/// what the policy references.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub(crate) roots: [Value; 4],
    /// `budget`, when the policy reads a budget.
    pub(crate) budget: Option<Value>,
}

/// The whole header map. A repeated header reads as its first value, as
/// Envoy's single-header lookup returns it, so that a policy sees the same
/// value however it refers to the header.
fn header_map(headers: Vec<(String, Vec<u8>)>) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    for (name, raw) in headers {
        let key = Key::String(Arc::new(name.to_ascii_lowercase()));
        map.entry(key).or_insert_with(|| text(raw));
    }
    Value::Map(Map { map: Arc::new(map) })
}

/// Header and string attribute bytes as a CEL string; bytes that are not
/// UTF-8 become U+FFFD rather than an error.
fn text(raw: Vec<u8>) -> Value {
    match String::from_utf8(raw) {
        Ok(s) => Value::String(Arc::new(s)),
        Err(e) => Value::String(Arc::new(String::from_utf8_lossy(e.as_bytes()).into_owned())),
    }
}

/// One attribute's raw value as a decision record holds it: text as a
/// string, numbers and booleans as JSON's, a timestamp in RFC 3339 with
/// nanoseconds, `request.body` as its summary; `null` when undecodable.
fn record_value(kind: Kind, raw: &[u8]) -> serde_json::Value {
    use serde_json::Value as Json;
    let eight = || -> Option<[u8; 8]> { raw.get(..8).and_then(|b| b.try_into().ok()) };
    match kind {
        Kind::String | Kind::Headers => Json::String(String::from_utf8_lossy(raw).into_owned()),
        Kind::Int => eight().map_or(Json::Null, |b| i64::from_le_bytes(b).into()),
        Kind::UInt => eight().map_or(Json::Null, |b| u64::from_le_bytes(b).into()),
        Kind::Bool => raw.first().map_or(Json::Null, |b| Json::Bool(*b != 0)),
        Kind::Body => serde_json::from_slice(raw).unwrap_or(Json::Null),
        Kind::Timestamp => eight()
            .and_then(|b| {
                let nanos = i64::from_le_bytes(b);
                chrono::DateTime::from_timestamp(
                    nanos.div_euclid(1_000_000_000),
                    // in 0..1e9, so the cast is lossless
                    nanos.rem_euclid(1_000_000_000) as u32,
                )
            })
            .map_or(Json::Null, |t| {
                Json::String(t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
            }),
    }
}

fn decode(kind: Kind, raw: Vec<u8>) -> Option<Value> {
    let eight = || -> Option<[u8; 8]> { raw.get(..8).and_then(|b| b.try_into().ok()) };
    match kind {
        Kind::String | Kind::Headers => Some(text(raw)),
        Kind::Int => eight().map(|b| Value::Int(i64::from_le_bytes(b))),
        Kind::UInt => eight().map(|b| Value::UInt(u64::from_le_bytes(b))),
        Kind::Bool => raw.first().map(|b| Value::Bool(*b != 0)),
        Kind::Body => super::body::BodySummary::decode(&raw),
        Kind::Timestamp => eight().and_then(|b| {
            let nanos = i64::from_le_bytes(b);
            let utc = chrono::DateTime::from_timestamp(
                nanos.div_euclid(1_000_000_000),
                // in 0..1e9, so the cast is lossless
                nanos.rem_euclid(1_000_000_000) as u32,
            )?;
            Some(Value::Timestamp(utc.fixed_offset()))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_proxy_wasm_encodings() {
        assert_eq!(
            decode(Kind::Int, 443i64.to_le_bytes().to_vec()),
            Some(Value::Int(443))
        );
        assert_eq!(decode(Kind::Bool, vec![1]), Some(Value::Bool(true)));
        assert_eq!(
            decode(Kind::Int, vec![1, 2]),
            None,
            "short integers are absent, not a panic"
        );
        assert_eq!(decode(Kind::Bool, vec![]), None);
        assert_eq!(
            decode(Kind::String, vec![b'a', 0xff]),
            Some(Value::String(Arc::new("a\u{fffd}".into())))
        );
        let ts = decode(
            Kind::Timestamp,
            1_700_000_000_123_000_000i64.to_le_bytes().to_vec(),
        );
        match ts {
            Some(Value::Timestamp(t)) => assert_eq!(t.timestamp_millis(), 1_700_000_000_123),
            other => panic!("expected a timestamp, got {other:?}"),
        }
    }
}
