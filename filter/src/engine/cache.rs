//! The decision cache: a bounded LRU map from the raw values of the
//! attributes a policy reads to the decision it made for them.
//!
//! A decision is a pure function of the policy, those values and the live
//! snapshot it was decided under (CEL has no side effects and the cluster
//! inventory is part of the policy), so a cached decision is exactly what
//! evaluating again would give. For a policy that reads live state, the
//! snapshot's epoch leads the key: a new snapshot never meets an entry of
//! an older one. The cache belongs to
//! one compiled policy: a new configuration starts with an empty one. A policy
//! that reads a per-request attribute (`request.id`, `request.time`,
//! `source.port`, `connection.id`) or the whole header map gets no cache.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::attributes::Fetched;
use super::decision::Decision;

/// Entries kept when the policy does not say (`options.decision_cache_size`).
pub const DEFAULT_DECISION_CACHE_SIZE: usize = 1024;
/// Requests whose read values are longer than this are decided without the
/// cache, so that its memory stays bounded (about 2 MiB at the default size)
/// whatever clients send.
pub const MAX_KEY_BYTES: usize = 2048;

pub(crate) struct DecisionCache {
    state: Mutex<State>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A decision and, for a policy that keeps a decision log, its record.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) decision: Arc<Decision>,
    pub(crate) record: Option<Arc<str>>,
}

impl Entry {
    fn new((decision, record): (Decision, Option<String>)) -> Entry {
        Entry {
            decision: Arc::new(decision),
            record: record.map(Arc::from),
        }
    }
}

struct State {
    /// Each entry's record says `"cached":true`, as a hit logs it.
    entries: LruCache<Box<[u8]>, Entry>,
    /// Reused buffer for the key of the request being decided.
    key: Vec<u8>,
}

/// How a decision was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// From the decision cache.
    FromCache,
    /// Evaluated on a cache miss (and cached unless its values were too long).
    Missed,
    /// Evaluated without the cache (off, or a traced decision).
    Evaluated,
}

/// Hits and misses since the policy was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl DecisionCache {
    /// A cache of `size` entries; `None` for size 0 (caching off).
    pub(crate) fn new(size: usize) -> Option<DecisionCache> {
        let size = NonZeroUsize::new(size)?;
        Some(DecisionCache {
            state: Mutex::new(State {
                entries: LruCache::new(size),
                key: Vec::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The cached decision for these values, or the one `decide` makes
    /// (then cached), and which of the two it was. `decide` also gives the
    /// decision's record, when the policy keeps a log, as a miss logs it
    /// (`"cached":false`): a hit reuses it, since the record holds exactly
    /// the values the key is made of.
    pub(crate) fn get_or_decide(
        &self,
        epoch: Option<u64>,
        fetched: Fetched,
        decide: impl FnOnce(Fetched) -> (Decision, Option<String>),
    ) -> (Entry, Served) {
        // Filters are single-threaded; a poisoned lock (a panic elsewhere
        // while deciding) only costs the cache, never the decision.
        let Ok(mut state) = self.state.lock() else {
            return (Entry::new(decide(fetched)), Served::Evaluated);
        };
        let State { entries, key } = &mut *state;
        key.clear();
        if let Some(epoch) = epoch {
            key.extend_from_slice(&epoch.to_le_bytes());
        }
        fetched.key(key);
        if key.len() > MAX_KEY_BYTES {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return (Entry::new(decide(fetched)), Served::Missed);
        }
        if let Some(entry) = entries.get(key.as_slice()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return (entry.clone(), Served::FromCache);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let key: Box<[u8]> = key.as_slice().into();
        let entry = Entry::new(decide(fetched));
        let hit = Entry {
            decision: entry.decision.clone(),
            record: (entry.record.as_deref())
                .map(|r| Arc::from(r.replacen("\"cached\":false", "\"cached\":true", 1))),
        };
        entries.put(key, hit);
        (entry, Served::Missed)
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}
