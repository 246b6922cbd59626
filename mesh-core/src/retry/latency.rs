//! Recent latencies of a destination, for the hedging delay.
//!
//! A log-linear histogram (8 sub-buckets per power of two: within 12.5 %) in atomics, in two
//! halves that rotate every half window, so a percentile always covers between half a window and
//! a whole one of recent history. Recording is one atomic increment.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

const SUB_BITS: u32 = 3;
const BUCKETS: usize = 64 << SUB_BITS;

pub(crate) struct LatencyTracker {
    current: Box<[AtomicU64]>,
    previous: Box<[AtomicU64]>,
    epoch: Instant,
    rotated_at_ns: AtomicU64,
    half_ns: u64,
}

fn index(ns: u64) -> usize {
    let v = ns.max(1);
    let k = 63 - v.leading_zeros();
    if k < SUB_BITS {
        return v as usize;
    }
    let sub = (v >> (k - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    ((k as usize) << SUB_BITS) + sub as usize
}

/// The largest value of a bucket.
fn upper(idx: usize) -> u64 {
    let k = (idx >> SUB_BITS) as u32;
    if k < SUB_BITS {
        return idx as u64;
    }
    let sub = (idx as u64) & ((1 << SUB_BITS) - 1);
    (((1 << SUB_BITS) + sub + 1) << (k - SUB_BITS)).saturating_sub(1)
}

impl LatencyTracker {
    pub(crate) fn new(window: Duration) -> Self {
        let zeros = || {
            (0..BUCKETS)
                .map(|_| AtomicU64::new(0))
                .collect::<Box<[_]>>()
        };
        Self {
            current: zeros(),
            previous: zeros(),
            epoch: Instant::now(),
            rotated_at_ns: AtomicU64::new(0),
            half_ns: (window.as_nanos() / 2).max(1) as u64,
        }
    }

    fn maybe_rotate(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let last = self.rotated_at_ns.load(Relaxed);
        if now.saturating_sub(last) < self.half_ns {
            return;
        }
        if self
            .rotated_at_ns
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
        {
            for (cur, prev) in self.current.iter().zip(self.previous.iter()) {
                prev.store(cur.swap(0, Relaxed), Relaxed);
            }
        }
    }

    pub(crate) fn record(&self, latency: Duration) {
        self.maybe_rotate();
        let idx = index(latency.as_nanos().min(u128::from(u64::MAX)) as u64).min(BUCKETS - 1);
        self.current[idx].fetch_add(1, Relaxed);
    }

    /// The `q` quantile of recent latencies, if at least `min_samples` are known.
    pub(crate) fn quantile(&self, q: f64, min_samples: u64) -> Option<Duration> {
        self.maybe_rotate();
        let counts: Vec<u64> = self
            .current
            .iter()
            .zip(self.previous.iter())
            .map(|(c, p)| c.load(Relaxed) + p.load(Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 || total < min_samples {
            return None;
        }
        let want = ((total as f64) * q).ceil() as u64;
        let mut seen = 0;
        for (idx, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(Duration::from_nanos(upper(idx)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_an_eighth() {
        for v in [1u64, 7, 8, 100, 1_000, 123_456, 10_000_000, 1 << 40] {
            let up = upper(index(v));
            assert!(
                up >= v && (up as f64) <= v as f64 * 1.13 + 1.0,
                "{v} -> {up}"
            );
        }
    }

    #[test]
    fn quantiles_need_enough_samples() {
        let t = LatencyTracker::new(Duration::from_secs(10));
        for i in 1..=100u64 {
            t.record(Duration::from_millis(i));
        }
        assert!(t.quantile(0.9, 1_000).is_none());
        let p90 = t.quantile(0.9, 50).unwrap();
        assert!(
            p90 >= Duration::from_millis(90) && p90 <= Duration::from_millis(102),
            "{p90:?}"
        );
    }
}
