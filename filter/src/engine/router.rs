//! What the adapter calls per request: a loaded policy, which never changes,
//! and the state kept beside it while it decides: the decision cache and the
//! live cluster snapshot. A new configuration gets a new router.

use std::sync::{Arc, Mutex};

use super::attributes::{AttributeHost, Fetched};
use super::cache::{CacheStats, DecisionCache, Served};
use super::decision::Decision;
use super::decision_log::{cel_json, decision_record, ReadValues};
use super::live::LiveSnapshot;
use super::live_view::LiveView;
use super::policy::Policy;

/// One decision, how it was served, and its record when one was asked for.
pub struct Decided {
    pub decision: Arc<Decision>,
    pub served: Served,
    /// The decision record (one JSON line), when the policy keeps a log.
    pub record: Option<Arc<str>>,
}

/// A policy, its decision cache and the live snapshot it decides under.
pub struct Router {
    policy: Policy,
    /// `None` when the policy's cache size is 0.
    cache: Option<DecisionCache>,
    /// The current live snapshot, for a policy that reads live state.
    live: Mutex<Option<Arc<LiveView>>>,
}

impl Router {
    /// A router for `policy`, with the decision cache its options ask for
    /// and no live snapshot yet (every live value absent).
    pub fn new(policy: Policy) -> Router {
        let cache = DecisionCache::new(policy.decision_cache_size());
        Router {
            policy,
            cache,
            live: Mutex::new(None),
        }
    }

    /// The policy this router decides with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the live snapshot; decisions from here on see it, and none
    /// is served from a cache entry decided under an earlier one. A
    /// snapshot that agrees with the current one on every value the policy
    /// reads changes nothing, so the cache keeps its entries.
    pub fn set_live(&self, snapshot: &LiveSnapshot) {
        if !self.policy.reads_live {
            return;
        }
        if let Ok(mut live) = self.live.lock() {
            if let Some(current) = live.as_ref() {
                if current.read == LiveView::read(&self.policy, snapshot) {
                    return;
                }
            }
            let epoch = live.as_ref().map_or(1, |view| view.epoch + 1);
            *live = Some(Arc::new(LiveView::new(&self.policy, snapshot, epoch)));
        }
    }

    /// The epoch of the current live snapshot: 0 before the first, and for
    /// a policy that reads no live state.
    pub fn live_epoch(&self) -> u64 {
        self.live_view().map_or(0, |view| view.epoch)
    }

    /// A live number of `cluster` in the current snapshot, when the policy
    /// reads that field and the value is fresh (such as the feed's
    /// `price_per_1k_tokens`, which usage is then charged at).
    pub fn live_number(&self, cluster: &str, field: &str) -> Option<f64> {
        let view = self.live_view()?;
        let index = self.policy.cluster_names().position(|c| c == cluster)?;
        let (_, value) = view.read.get(index)?.iter().find(|(f, _)| f == field)?;
        super::inventory::number(value)
    }

    fn live_view(&self) -> Option<Arc<LiveView>> {
        if !self.policy.reads_live {
            return None;
        }
        self.live.lock().ok().and_then(|live| live.clone())
    }

    /// Decides one request. Without a trace, the decision comes from the
    /// cache when the same values were decided under the same snapshot.
    pub fn decide(&self, host: &mut dyn AttributeHost, trace: bool) -> (Arc<Decision>, Served) {
        let decided = self.decide_recorded(host, trace, false);
        (decided.decision, decided.served)
    }

    /// Decides one request, as [`Router::decide`], and when `record` is
    /// set and the policy keeps a decision log, the decision's record.
    pub fn decide_recorded(
        &self,
        host: &mut dyn AttributeHost,
        trace: bool,
        record: bool,
    ) -> Decided {
        let policy = &self.policy;
        let live = self.live_view();
        let fetched = Fetched::fetch(host, &policy.needs);
        let decide = |fetched: Fetched, trace: bool, served: Served, record: bool| {
            let read = (policy.decision_log.as_ref())
                .filter(|_| record)
                .map(|l| fetched.read_values(&policy.needs, &|path| l.redacts(path)));
            let attributes = fetched.into_attributes(&policy.needs);
            let decision = policy.decide_with(&attributes, live.as_deref(), trace);
            let record = read.map(|read| self.record(&decision, served, read, live.as_deref()));
            (decision, record)
        };
        match &self.cache {
            Some(cache) if !trace => {
                let epoch = policy
                    .reads_live
                    .then(|| live.as_ref().map_or(0, |v| v.epoch));
                // Cached decisions keep their records, so a policy that
                // keeps a log records every miss; hits reuse the record.
                let (entry, served) = cache.get_or_decide(epoch, fetched, |fetched| {
                    decide(fetched, false, Served::Missed, true)
                });
                Decided {
                    decision: entry.decision,
                    served,
                    record: entry.record.filter(|_| record),
                }
            }
            _ => {
                let (decision, record) = decide(fetched, trace, Served::Evaluated, record);
                Decided {
                    decision: Arc::new(decision),
                    served: Served::Evaluated,
                    record: record.map(Arc::from),
                }
            }
        }
    }

    /// A decision's record, with the live values it was decided under.
    fn record(
        &self,
        decision: &Decision,
        served: Served,
        read: ReadValues,
        live: Option<&LiveView>,
    ) -> String {
        let live = (self.policy.reads_live).then(|| {
            let clusters = live.map(|view| self.live_record(view));
            (self.policy.live_fields_read(), clusters.unwrap_or_default())
        });
        decision_record(self.policy.identity(), decision, served, read, live, None)
    }

    /// The record of a decision made without evaluating the policy (a
    /// request refused for its body, with the body error's `code`), when
    /// the policy keeps a decision log.
    pub fn refusal_record(&self, decision: &Decision, code: &str) -> Option<String> {
        self.policy.decision_log.as_ref()?;
        Some(decision_record(
            self.policy.identity(),
            decision,
            Served::Evaluated,
            ReadValues::default(),
            None,
            Some(code),
        ))
    }

    /// Each cluster's live values the policy read, for a record.
    fn live_record(&self, view: &LiveView) -> serde_json::Map<String, serde_json::Value> {
        (self.policy.cluster_names().zip(&view.read))
            .map(|(cluster, fields)| {
                let fields = (fields.iter())
                    .map(|(field, value)| (field.clone(), cel_json(value)))
                    .collect();
                (cluster.to_string(), serde_json::Value::Object(fields))
            })
            .collect()
    }

    /// Decision cache hits and misses since load.
    pub fn decision_cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map(DecisionCache::stats)
            .unwrap_or_default()
    }
}
