//! Per-source-address rate limiting for unauthenticated calls (node attestation): a token
//! bucket per address, so one host flooding `Attest` cannot crowd out everybody else.
//!
//! IPv4 addresses (and IPv4-mapped IPv6 ones) are limited one by one; IPv6 addresses per /64,
//! the smallest block a host is usually given, so rotating through one's own prefix does not
//! buy more attempts. The table of buckets is bounded: when it is full, buckets that have
//! refilled (and so hold nothing an absent bucket would not) are dropped; if it is still full,
//! new addresses are refused until some refill. That fails closed under a flood from a huge
//! number of addresses, which the global signing admission limit backs up.
//!
//! Time is passed in, so the behaviour is tested without sleeping.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// A token bucket per source address.
#[derive(Debug)]
pub struct AddressLimiter {
    per_second: f64,
    burst: f64,
    max_tracked: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
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

/// The address a bucket is kept for: IPv6 collapsed to its /64, IPv4-mapped IPv6 to IPv4.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl AddressLimiter {
    /// `per_second` calls per address on average, in bursts of at most `max(per_second, 1)`
    /// (SPIRE's limiter uses the same burst).
    pub fn new(per_second: u32) -> Self {
        Self::with_capacity(per_second, MAX_TRACKED)
    }

    /// As [`AddressLimiter::new`], tracking at most `max_tracked` addresses.
    pub fn with_capacity(per_second: u32, max_tracked: usize) -> Self {
        let per_second = f64::from(per_second);
        Self {
            per_second,
            burst: per_second.max(1.0),
            max_tracked,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one call's worth for `ip` at `now`; false means refuse the call.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let key = bucket_key(ip);
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_per_second_per_address() {
        let l = AddressLimiter::new(1);
        let t0 = Instant::now();
        assert!(l.allow(ip("10.0.0.1"), t0));
        assert!(!l.allow(ip("10.0.0.1"), t0));
        assert!(!l.allow(ip("10.0.0.1"), t0 + Duration::from_millis(900)));
        // Another address has its own bucket.
        assert!(l.allow(ip("10.0.0.2"), t0));
        assert!(l.allow(ip("10.0.0.1"), t0 + Duration::from_millis(1000)));
        // A long pause does not bank more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert!(l.allow(ip("10.0.0.1"), later));
        assert!(!l.allow(ip("10.0.0.1"), later));
    }

    #[test]
    fn burst_equals_the_rate() {
        let l = AddressLimiter::new(5);
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| l.allow(ip("10.0.0.1"), t0)).count();
        assert_eq!(allowed, 5);
        assert!(l.allow(ip("10.0.0.1"), t0 + Duration::from_millis(200)));
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_v4_as_v4() {
        let l = AddressLimiter::new(1);
        let t0 = Instant::now();
        assert!(l.allow(ip("2001:db8:1:2::1"), t0));
        assert!(!l.allow(ip("2001:db8:1:2:ffff::9"), t0));
        assert!(l.allow(ip("2001:db8:1:3::1"), t0));
        assert!(l.allow(ip("192.0.2.7"), t0));
        assert!(!l.allow(ip("::ffff:192.0.2.7"), t0));
    }

    #[test]
    fn a_full_table_drops_refilled_buckets_then_fails_closed() {
        let l = AddressLimiter::with_capacity(1, 2);
        let t0 = Instant::now();
        assert!(l.allow(ip("10.0.0.1"), t0));
        assert!(l.allow(ip("10.0.0.2"), t0));
        // Full, nothing refilled: a third address is refused, the known ones keep their state.
        assert!(!l.allow(ip("10.0.0.3"), t0));
        assert!(!l.allow(ip("10.0.0.1"), t0));
        // Once the buckets have refilled they are forgotten and room is made.
        let later = t0 + Duration::from_secs(2);
        assert!(l.allow(ip("10.0.0.3"), later));
        assert!(!l.allow(ip("10.0.0.3"), later));
    }
}
