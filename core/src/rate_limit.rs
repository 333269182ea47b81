//! Token buckets per caller, bounded in memory: the server limits unauthenticated attestation
//! per source address with it, the agent Workload API calls per calling user.
//!
//! The table of buckets is bounded: when it is full, buckets that have refilled (and so hold
//! nothing an absent bucket would not) are dropped; if it is still full, new callers are
//! refused until some refill. That fails closed under a flood from a huge number of callers.
//!
//! Time is passed in, so the behaviour is tested without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// A token bucket per key.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    per_second: f64,
    burst: f64,
    max_tracked: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.at = now;
    }
}

impl<K: Eq + Hash> KeyedLimiter<K> {
    /// `per_second` calls per key on average, in bursts of at most `max(per_second, 1)` (the
    /// burst SPIRE's limiters use), tracking at most `max_tracked` keys.
    pub fn new(per_second: u32, max_tracked: usize) -> Self {
        let per_second = f64::from(per_second);
        Self {
            per_second,
            burst: per_second.max(1.0),
            max_tracked,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call's worth for `key` at `now`; false means refuse the call.
    pub fn allow(&self, key: K, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.max_tracked {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| {
                b.refill(now, per_second, burst);
                b.tokens < burst
            });
            if buckets.len() >= self.max_tracked {
                return false;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.refill(now, self.per_second, self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_per_second_per_key() {
        let l = KeyedLimiter::new(1, 100);
        let t0 = Instant::now();
        assert!(l.allow(1, t0));
        assert!(!l.allow(1, t0));
        assert!(!l.allow(1, t0 + Duration::from_millis(900)));
        // Another key has its own bucket.
        assert!(l.allow(2, t0));
        assert!(l.allow(1, t0 + Duration::from_millis(1000)));
        // A long pause does not bank more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(l.allow(1, later));
        assert!(!l.allow(1, later));
    }

    #[test]
    fn burst_equals_the_rate() {
        let l = KeyedLimiter::new(5, 100);
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| l.allow("a", t0)).count();
        assert_eq!(allowed, 5);
        assert!(l.allow("a", t0 + Duration::from_millis(200)));
    }

    #[test]
    fn a_full_table_drops_refilled_buckets_then_fails_closed() {
        let l = KeyedLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(l.allow(1, t0));
        assert!(l.allow(2, t0));
        // Full, nothing refilled: a third key is refused, the known ones keep their state.
        assert!(!l.allow(3, t0));
        assert!(!l.allow(1, t0));
        // Once the buckets have refilled they are forgotten and room is made.
        let later = t0 + Duration::from_secs(2);
        assert!(l.allow(3, later));
        assert!(!l.allow(3, later));
    }
}
