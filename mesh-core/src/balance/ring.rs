//! A consistent-hash ring (ketama style) for header affinity.
//!
//! Each endpoint owns points on a 64-bit ring in proportion to its weight, at least
//! `min_ring_size` points in all (Envoy's `RingHashLbConfig.minimum_ring_size` default, 1024).
//! A request's key hashes to a point; the endpoint owning the next point clockwise serves it. When
//! an endpoint joins or leaves, only the keys next to its points move (about 1/n of them).

use std::net::SocketAddr;

/// Default minimum number of points on the ring: Envoy's `minimum_ring_size` default.
pub const DEFAULT_MIN_RING_SIZE: usize = 1024;

/// Upper bound on ring points, whatever the weights: Envoy's `maximum_ring_size` default (8M)
/// would be wasteful in-process; 64k points keep lookups in L2 cache and spread within 1 %.
const MAX_RING_SIZE: usize = 65_536;

#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// (point, endpoint index), sorted by point.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// Builds a ring over endpoints given as (address, weight), in table order.
    pub(crate) fn build(endpoints: &[(SocketAddr, u32)], min_ring_size: usize) -> Self {
        if endpoints.is_empty() {
            return Self::default();
        }
        let total: u64 = endpoints.iter().map(|(_, w)| u64::from(*w)).sum();
        let size = min_ring_size.clamp(endpoints.len(), MAX_RING_SIZE) as u64;
        let mut points = Vec::with_capacity(size as usize + endpoints.len());
        for (i, (addr, w)) in endpoints.iter().enumerate() {
            let share = ((size * u64::from(*w)) as f64 / total as f64)
                .round()
                .max(1.0) as u64;
            for replica in 0..share {
                let key = format!("{addr}_{replica}");
                points.push((hash(key.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Self {
            points: points.into(),
        }
    }

    /// The endpoint index owning `key`'s point.
    #[cfg(test)]
    pub(crate) fn lookup(&self, key: u64) -> Option<usize> {
        self.lookup_where(key, |_| true)
    }

    /// The first endpoint clockwise from `key`'s point that `allowed` accepts (ejected or
    /// already tried endpoints are passed over, keeping the rest of the keys where they are).
    pub(crate) fn lookup_where(&self, key: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < key);
        (0..len)
            .map(|k| self.points[(start + k) % len].1 as usize)
            .find(|&idx| allowed(idx))
    }
}

/// FNV-1a over the bytes, then the murmur3 64-bit finalizer for avalanche. Stable across
/// processes and versions, so affinity survives restarts of the client.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (SocketAddr::from(([10, 0, 0, 1], 8000 + i)), 1))
            .collect()
    }

    #[test]
    fn spreads_keys_evenly_and_moves_few_on_change() {
        let ring = Ring::build(&eps(4), DEFAULT_MIN_RING_SIZE);
        let mut counts = [0usize; 4];
        let keys: Vec<u64> = (0..20_000)
            .map(|k| hash(format!("user-{k}").as_bytes()))
            .collect();
        for k in &keys {
            counts[ring.lookup(*k).unwrap()] += 1;
        }
        for c in counts {
            assert!((4_000..6_000).contains(&c), "{counts:?}");
        }
        // Adding a fifth endpoint moves roughly a fifth of the keys, not most of them.
        let bigger = Ring::build(&eps(5), DEFAULT_MIN_RING_SIZE);
        let moved = keys
            .iter()
            .filter(|k| ring.lookup(**k) != bigger.lookup(**k))
            .count();
        assert!(moved < keys.len() * 3 / 10, "moved {moved}");
    }

    #[test]
    fn honours_weights() {
        let mut e = eps(2);
        e[1].1 = 3;
        let ring = Ring::build(&e, DEFAULT_MIN_RING_SIZE);
        let heavy = (0..20_000)
            .filter(|k| ring.lookup(hash(format!("k{k}").as_bytes())) == Some(1))
            .count();
        assert!((13_000..17_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn hash_is_stable() {
        assert_eq!(hash(b"jason"), hash(b"jason"));
        assert_ne!(hash(b"jason"), hash(b"jasoN"));
        assert!(Ring::default().lookup(1).is_none());
    }
}
