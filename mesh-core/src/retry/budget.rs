//! The retry budget: how much extra load retries may add.
//!
//! Finagle's and Linkerd's budget (and tower's `TpsBudget`, which it replaces here): every
//! request deposits `ratio` of a retry into a window of `ttl` (10 one-tenth slots), every retry
//! withdraws one, and `min_per_second × ttl` retries are always available on top. A request
//! counts for `ttl` after it was made.
//!
//! Why not tower's `TpsBudget`: it takes a `Mutex` and reads the clock on every deposit, i.e. on
//! every request (profiled at c32 it was the retry layer's largest single cost after allocation),
//! and it cannot report its balance, which the debug snapshot shows. This one is lock-free: a
//! deposit is one atomic add on the current slot; slots are recycled by a compare-and-swap on
//! their generation. Two racing withdrawals may both take the last token; a budget can overdraw
//! by the number of threads, which a 20 % allowance does not notice.

use std::{
    sync::atomic::{
        AtomicI64, AtomicU64,
        Ordering::{AcqRel, Acquire, Relaxed},
    },
    time::{Duration, Instant},
};

const SLOTS: usize = 10;
/// Fixed-point unit of one retry.
const UNIT: i64 = 1_000;

struct Slot {
    generation: AtomicU64,
    value: AtomicI64,
}

/// A lock-free retry budget (see the [module docs](crate::retry)).
pub struct RetryBudget {
    slots: [Slot; SLOTS],
    slot_ns: u64,
    deposit: i64,
    reserve: i64,
    epoch: Instant,
}

impl RetryBudget {
    /// Retries may add `ratio` per request over `ttl`, plus `min_per_second` per second.
    pub fn new(ttl: Duration, min_per_second: u32, ratio: f32) -> Self {
        let ttl_secs = ttl.as_secs_f64().max(1.0);
        Self {
            slots: std::array::from_fn(|_| Slot {
                generation: AtomicU64::new(0),
                value: AtomicI64::new(0),
            }),
            slot_ns: (ttl.as_nanos() / SLOTS as u128).max(1) as u64,
            deposit: (f64::from(ratio) * UNIT as f64).round() as i64,
            reserve: (f64::from(min_per_second) * ttl_secs * UNIT as f64) as i64,
            epoch: Instant::now(),
        }
    }

    /// The current slot's generation (1-based, so that 0 means never used).
    fn generation(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64 / self.slot_ns + 1
    }

    fn slot(&self, generation: u64) -> &Slot {
        let slot = &self.slots[(generation % SLOTS as u64) as usize];
        let seen = slot.generation.load(Acquire);
        if seen != generation
            && slot
                .generation
                .compare_exchange(seen, generation, AcqRel, Acquire)
                .is_ok()
        {
            slot.value.store(0, Relaxed);
        }
        slot
    }

    /// A request was made.
    pub fn deposit(&self, now: Instant) {
        if self.deposit != 0 {
            self.slot(self.generation(now))
                .value
                .fetch_add(self.deposit, Relaxed);
        }
    }

    fn balance(&self, generation: u64) -> i64 {
        let window = generation.saturating_sub(SLOTS as u64 - 1);
        self.reserve
            + self
                .slots
                .iter()
                .filter(|s| {
                    let g = s.generation.load(Acquire);
                    g >= window && g <= generation
                })
                .map(|s| s.value.load(Relaxed))
                .sum::<i64>()
    }

    /// Takes one retry, if the budget allows.
    pub fn withdraw(&self, now: Instant) -> bool {
        let generation = self.generation(now);
        if self.balance(generation) < UNIT {
            return false;
        }
        self.slot(generation).value.fetch_sub(UNIT, Relaxed);
        true
    }

    /// Retries available now.
    pub fn available(&self) -> f64 {
        self.balance(self.generation(Instant::now())) as f64 / UNIT as f64
    }
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_plus_reserve() {
        let b = RetryBudget::new(Duration::from_secs(10), 1, 0.2);
        let now = Instant::now();
        // Reserve: 1/s × 10 s.
        for _ in 0..10 {
            assert!(b.withdraw(now));
        }
        assert!(!b.withdraw(now));
        for _ in 0..50 {
            b.deposit(now);
        }
        // 50 requests × 20 % = 10 more.
        for _ in 0..10 {
            assert!(b.withdraw(now));
        }
        assert!(!b.withdraw(now));
    }

    #[test]
    fn deposits_expire_after_the_ttl() {
        let b = RetryBudget::new(Duration::from_secs(1), 0, 1.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            b.deposit(t0);
        }
        assert!(b.withdraw(t0));
        let later = t0 + Duration::from_millis(1_500);
        assert!(
            !b.withdraw(later),
            "deposits older than the ttl no longer count"
        );
        assert!(b.available() >= 0.0);
    }
}
