//! Per-source-address rate limiting for unauthenticated calls (node attestation): a token
//! bucket per address ([`sigil_core::rate_limit`]), so one host flooding `Attest` cannot crowd
//! out everybody else.
//!
//! IPv4 addresses (and IPv4-mapped IPv6 ones) are limited one by one; IPv6 addresses per /64,
//! the smallest block a host is usually given, so rotating through one's own prefix does not
//! buy more attempts. When the table of addresses is full, new addresses are refused, which the
//! global signing admission limit backs up.

use std::net::IpAddr;
use std::time::Instant;

use sigil_core::rate_limit::KeyedLimiter;

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// A token bucket per source address.
#[derive(Debug)]
pub struct AddressLimiter(KeyedLimiter<IpAddr>);

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
        Self(KeyedLimiter::new(per_second, MAX_TRACKED))
    }

    /// Takes one call's worth for `ip` at `now`; false means refuse the call.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        self.0.allow(bucket_key(ip), now)
    }
}

#[cfg(test)]
mod tests {
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
        assert!(l.allow(ip("10.0.0.2"), t0));
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
}
