//! Endpoints an earlier attempt of the same request already used.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

/// How many attempts are remembered (the retry layer allows at most 10 retries; beyond four
/// distinct endpoints avoiding them all stops mattering).
const SLOTS: usize = 4;

/// Carried in request extensions by the retry layer: the balancer records each attempt's
/// endpoint here and, when it has a choice, sends a retry or hedge somewhere else (Envoy's
/// `previous_hosts` retry predicate). One allocation, no lock.
#[derive(Clone, Debug, Default)]
pub struct TriedEndpoints(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    keys: [AtomicU64; SLOTS],
    len: AtomicUsize,
}

/// A non-zero 64-bit key per address (IPv4 exactly; IPv6 hashed).
fn key(addr: &SocketAddr) -> u64 {
    let k = match addr {
        SocketAddr::V4(a) => (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port()),
        SocketAddr::V6(a) => {
            super::ring::hash(&a.ip().octets()) ^ u64::from(a.port()).rotate_left(48)
        }
    };
    k | (1 << 63)
}

impl TriedEndpoints {
    /// Records an endpoint.
    pub fn record(&self, addr: SocketAddr) {
        if self.contains(&addr) {
            return;
        }
        let i = self.0.len.fetch_add(1, Relaxed);
        if i < SLOTS {
            self.0.keys[i].store(key(&addr), Relaxed);
        }
    }

    /// Whether no attempt has recorded an endpoint yet.
    pub fn is_empty(&self) -> bool {
        self.0.len.load(Relaxed) == 0
    }

    /// Whether `addr` was used.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        let k = key(addr);
        let n = self.0.len.load(Relaxed).min(SLOTS);
        self.0.keys[..n].iter().any(|s| s.load(Relaxed) == k)
    }

    /// How many distinct endpoints were recorded.
    pub fn len(&self) -> usize {
        self.0.len.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_distinct_endpoints() {
        let t = TriedEndpoints::default();
        assert!(t.is_empty());
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "[::1]:80".parse().unwrap();
        t.record(a);
        t.record(a);
        assert!(t.contains(&a) && !t.contains(&b));
        t.record(b);
        assert!(t.contains(&b));
        assert_eq!(t.len(), 2);
    }
}
