//! A small, bounded, thread-safe map for attestation's hot path.
//!
//! Attestation runs on every Workload API call, and its slow steps (NSS name lookups, hashing a
//! binary) give the same answer call after call. This cache remembers them, never grows past a
//! fixed size (callers choose what is cached, not how much), and can forget entries after a TTL
//! for answers that may change behind our back (a renamed user).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A bounded map; when full, inserting first drops expired entries, then the oldest one.
pub(crate) struct BoundedCache<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
    capacity: usize,
    ttl: Option<Duration>,
}

struct Slot<V> {
    value: V,
    inserted: Instant,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache of at most `capacity` entries (at least one), each kept for `ttl` if given.
    pub(crate) fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    /// The cached value for `key`, unless absent or expired.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut slots = self.lock();
        let slot = slots.get(key)?;
        if self.expired(slot, Instant::now()) {
            slots.remove(key);
            return None;
        }
        Some(slot.value.clone())
    }

    /// Stores `value` under `key`, evicting to stay within capacity.
    ///
    /// Eviction scans the whole map, which is fine at the sizes used here (hundreds) and only
    /// happens on a miss, right after far more expensive work.
    pub(crate) fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        let mut slots = self.lock();
        if !slots.contains_key(&key) && slots.len() >= self.capacity {
            slots.retain(|_, slot| !self.expired(slot, now));
            if slots.len() >= self.capacity {
                let oldest = slots
                    .iter()
                    .min_by_key(|(_, slot)| slot.inserted)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    slots.remove(&oldest);
                }
            }
        }
        slots.insert(
            key,
            Slot {
                value,
                inserted: now,
            },
        );
    }

    /// Number of live and not yet evicted entries (expired ones count until touched).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn expired(&self, slot: &Slot<V>, now: Instant) -> bool {
        self.ttl
            .is_some_and(|ttl| now.saturating_duration_since(slot.inserted) >= ttl)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Slot<V>>> {
        // Every critical section is a single map operation, so a panic elsewhere cannot leave
        // the map half-updated; keep serving rather than poisoning attestation for good.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity_and_evicts_oldest() {
        let cache = BoundedCache::new(3, None);
        for i in 0..3 {
            cache.insert(i, i * 10);
            std::thread::sleep(Duration::from_millis(2));
        }
        cache.insert(3, 30);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get(&0), None, "oldest entry evicted");
        assert_eq!(cache.get(&1), Some(10));
        assert_eq!(cache.get(&3), Some(30));
    }

    #[test]
    fn overwriting_a_key_does_not_evict() {
        let cache = BoundedCache::new(2, None);
        cache.insert("a", 1);
        cache.insert("b", 2);
        cache.insert("a", 3);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&"a"), Some(3));
        assert_eq!(cache.get(&"b"), Some(2));
    }

    #[test]
    fn entries_expire_after_ttl() {
        let cache = BoundedCache::new(4, Some(Duration::ZERO));
        cache.insert(1, "x");
        assert_eq!(cache.get(&1), None);
        let cache = BoundedCache::new(4, Some(Duration::from_secs(3600)));
        cache.insert(1, "x");
        assert_eq!(cache.get(&1), Some("x"));
    }
}
