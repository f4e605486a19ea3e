//! What the adapter calls per request: a loaded policy, which never changes,
//! and the state kept beside it while it decides (the decision cache; later
//! the live cluster snapshot). A new configuration gets a new router.

use std::sync::Arc;

use super::attributes::{AttributeHost, Fetched};
use super::cache::{CacheStats, DecisionCache, Served};
use super::decision::Decision;
use super::policy::Policy;

/// A policy and its decision cache.
pub struct Router {
    policy: Policy,
    /// `None` when the policy's cache size is 0.
    cache: Option<DecisionCache>,
}

impl Router {
    /// A router for `policy`, with the decision cache its options ask for.
    pub fn new(policy: Policy) -> Router {
        let cache = DecisionCache::new(policy.decision_cache_size());
        Router { policy, cache }
    }

    /// The policy this router decides with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decides one request. Without a trace, the decision comes from the
    /// cache when the same values were decided before.
    pub fn decide(&self, host: &mut dyn AttributeHost, trace: bool) -> (Arc<Decision>, Served) {
        let policy = &self.policy;
        match &self.cache {
            Some(cache) if !trace => {
                let fetched = Fetched::fetch(host, &policy.needs);
                cache.get_or_decide(fetched, |fetched| {
                    policy.decide_with(&fetched.into_attributes(&policy.needs), false)
                })
            }
            _ => (Arc::new(policy.decide(host, trace)), Served::Evaluated),
        }
    }

    /// Decision cache hits and misses since load.
    pub fn decision_cache_stats(&self) -> CacheStats {
        self.cache
            .as_ref()
            .map(DecisionCache::stats)
            .unwrap_or_default()
    }
}
