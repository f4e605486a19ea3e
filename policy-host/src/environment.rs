//! What every VM of one simulated proxy shares, as Envoy's worker threads
//! share it: shared data and queues, the clock, and the network's scripted
//! answers. Start several VMs from one [`Environment`] to simulate workers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::Clock;
use crate::upstream::Upstreams;

/// Shared data (`proxy_{get,set}_shared_data`) and shared queues.
#[derive(Debug, Default)]
pub struct SharedState {
    /// Key -> (value, CAS version; never 0 once set).
    pub data: HashMap<String, (Vec<u8>, u32)>,
    /// (vm id, name, items); a queue's id is its index plus 1.
    pub queues: Vec<(String, String, VecDeque<Vec<u8>>)>,
    /// The VM (its serial number) that registered each queue, by queue id.
    pub queue_owners: HashMap<u32, u64>,
    /// `proxy_on_queue_ready` notifications not delivered yet: (owner VM, queue id).
    pub queue_ready: Vec<(u64, u32)>,
}

/// The store every VM of one environment reads and writes.
#[derive(Debug, Clone, Default)]
pub struct SharedStore(Arc<Mutex<SharedState>>);

impl SharedStore {
    /// The store, locked; a panic elsewhere while it was held leaves it as it was.
    pub fn lock(&self) -> MutexGuard<'_, SharedState> {
        match self.0.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// One shared-data value, as the guest would read it.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().data.get(key).map(|(value, _)| value.clone())
    }
}

/// The shared store, clock and network of one simulated proxy.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub shared: SharedStore,
    pub clock: Clock,
    pub upstreams: Upstreams,
}

impl Environment {
    /// An environment whose clock is virtual, starting at `nanos` since the epoch.
    pub fn with_virtual_clock(nanos: u64) -> Environment {
        Environment {
            clock: Clock::virtual_at(nanos),
            ..Environment::default()
        }
    }
}
