//! Peak-EWMA load, shared between every clone of a balancer.
//!
//! The algorithm is tower's [`PeakEwma`](tower::load::PeakEwma) (itself from Finagle): each
//! endpoint keeps an exponentially weighted moving average of its response latency that jumps
//! to any *higher* sample at once (the peak) and decays toward lower samples over `decay`, and
//! toward zero while the endpoint goes unused, so a slow endpoint gets a second chance. The load
//! of an endpoint is `estimate × (in_flight + 1)`.
//!
//! Three changes, measured in the bench's `lb` scenario and the spread tests:
//! - every sample below the estimate weighs at least [`MIN_SAMPLE_WEIGHT`] (see there why);
//! - a peak can at most double the estimate per answer ([`MAX_PEAK_STEP`]);
//! - an endpoint has no estimate until it has answered [`WARMUP_SAMPLES`] times (tower starts
//!   it at a constant `default_rtt`, 30 ms in Linkerd): until then p2c compares it by in-flight
//!   count alone, using its partner's estimate, and the estimate it starts with is the *fastest*
//!   of those first answers (optimistic: the next slower answer raises it at once, as a peak,
//!   while a pessimistic start would only come down over the decay time). A constant start either starves new endpoints at low concurrency (30 ms
//!   loses every comparison against endpoints answering in 100 µs until it decays, about a
//!   minute with a 10 s decay: in the quickstart demo, one of three endpoints got no request) or,
//!   if optimistic, floods them; starting from the first answer alone would make endpoints whose
//!   first answers paid for TCP connects (10–50x the steady latency on loopback) look slow.
//!   Borrowing the partner's estimate gives a new endpoint a least-request share for its first
//!   answers.
//!
//! Why not tower's type: `tower::load::PeakEwma` keeps its state behind a `Mutex` in a service
//! that is not `Clone`, and counts in-flight requests with `Arc::strong_count`, so sharing one
//! balancer between tasks needs `tower::buffer::Buffer`, measured in `shared/PERF-NOTES.md` at
//! +20–25 µs p50 per request at concurrency 1: twice the whole latency budget of the `overhead`
//! benchmark (mesh p50 ≤ raw p50 + 10 µs). Here the same state lives in atomics, so any clone of
//! the balancer picks an endpoint without a task hop. Two racing updates may lose one sample;
//! an average over thousands of samples does not notice.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// The least weight one response below the estimate gets: 3 %, so an estimate forgets a
/// latency peak within roughly the next 30–100 responses however fast they come.
///
/// tower's (and Finagle's) Peak-EWMA weighs a sample by the time since the previous one only:
/// `w = 1 − exp(−Δt/decay)`. At 4,000 responses per second per endpoint and a 10 s decay that is
/// 0.0025 % per response, so the estimate stays at the worst latency of the last several seconds
/// (a scheduler hiccup, one GC pause) rather than the endpoint's typical latency. Multiplied by
/// `in_flight + 1`, that inflated estimate let an idle endpoint ten times slower look cheaper:
/// in the bench's `lb` scenario (c16, three 1 ms backends and one 10 ms) pure time decay sent
/// 4.7 % of requests to the slow backend and its p99 was 6.4x the oracle's; with this floor it
/// gets 0.005–0.013 % and p99 is within 2–5 % of the oracle's (0.02 and 0.05 measured alike, 0.1
/// let noise through: 0.3 %). At low rates (Δt/decay > 3 %, i.e. below about 3 responses per
/// second with the 10 s decay) the time-based weight is larger and the behaviour is tower's.
const MIN_SAMPLE_WEIGHT: f64 = 0.03;

/// The most one answer can multiply the estimate by. Peaks are believed at once, but a single
/// outlier (a scheduler hiccup, a reconnect: 10–50x the usual latency on loopback) cannot make
/// an endpoint look so slow that p2c stops sending to it: an endpoint that gets no requests gets
/// no answers to correct its estimate, which then decays by time alone (at concurrency 9 over
/// three 150 µs endpoints, a single 1.5 ms answer would keep one out of rotation for about 12 s
/// with a 10 s decay). A truly slower endpoint reaches its latency within a few answers (×2
/// each); the `lb` figures were measured with this step.
const MAX_PEAK_STEP: f64 = 2.0;

/// Answers an endpoint gives before it has an estimate of its own (see the module docs).
pub(crate) const WARMUP_SAMPLES: u32 = 10;

/// Per-endpoint latency estimate and in-flight count.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    /// Answers seen, up to [`WARMUP_SAMPLES`].
    samples: std::sync::atomic::AtomicU32,
    /// The estimate in nanoseconds, as `f64` bits.
    rtt_ns: AtomicU64,
    /// When the estimate was last updated, in nanoseconds since the balancer's epoch.
    stamp_ns: AtomicU64,
    in_flight: AtomicUsize,
}

impl PeakEwma {
    /// A state with no latency observed yet.
    pub(crate) fn new(now_ns: u64) -> Self {
        Self {
            samples: std::sync::atomic::AtomicU32::new(0),
            rtt_ns: AtomicU64::new(f64::NAN.to_bits()),
            stamp_ns: AtomicU64::new(now_ns),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The estimate as of `now_ns`, decayed toward zero for the time since the last update;
    /// `None` during the warm-up.
    pub(crate) fn estimate_ns(&self, now_ns: u64, decay_ns: f64) -> Option<f64> {
        if self.samples.load(Relaxed) < WARMUP_SAMPLES {
            return None;
        }
        let rtt = f64::from_bits(self.rtt_ns.load(Relaxed));
        let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
        Some(rtt * (-elapsed / decay_ns).exp())
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(crate) fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    pub(crate) fn finish(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// Folds in one observed latency.
    pub(crate) fn observe(&self, rtt: Duration, now_ns: u64, decay_ns: f64) {
        let sample = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.rtt_ns.load(Relaxed));
        let n = self.samples.load(Relaxed);
        let next = if n < WARMUP_SAMPLES {
            // Warm-up: the fastest of the first answers.
            self.samples.store(n + 1, Relaxed);
            if prev.is_nan() {
                sample
            } else {
                prev.min(sample)
            }
        } else if prev < sample {
            // A peak: a worse latency is believed at once — up to double the estimate per answer.
            sample.min(prev * MAX_PEAK_STEP)
        } else {
            let elapsed = now_ns.saturating_sub(self.stamp_ns.load(Relaxed)) as f64;
            let decay = (-elapsed / decay_ns).exp().min(1.0 - MIN_SAMPLE_WEIGHT);
            prev * decay + sample * (1.0 - decay)
        };
        self.rtt_ns.store(next.to_bits(), Relaxed);
        self.stamp_ns.store(now_ns, Relaxed);
    }
}

/// Nanoseconds of `at` since `epoch` (saturating).
pub(crate) fn nanos_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: f64 = 10e9;

    fn warm(e: &PeakEwma, rtt: Duration) {
        for _ in 0..WARMUP_SAMPLES {
            e.observe(rtt, 0, DECAY);
        }
    }

    #[test]
    fn warm_up_takes_the_fastest_of_the_first_answers() {
        let e = PeakEwma::new(0);
        e.observe(Duration::from_millis(10), 0, DECAY); // paid for the connect
        for _ in 1..WARMUP_SAMPLES {
            assert_eq!(e.estimate_ns(0, DECAY), None);
            e.observe(Duration::from_millis(1), 0, DECAY);
        }
        let est = e.estimate_ns(0, DECAY).unwrap();
        assert!((est - 1e6).abs() < 1e3, "{est}");
    }

    #[test]
    fn peaks_immediately_and_decays_slowly() {
        let e = PeakEwma::new(0);
        assert_eq!(e.estimate_ns(0, DECAY), None);
        warm(&e, Duration::from_millis(30));
        e.observe(Duration::from_millis(100), 1_000, DECAY);
        // One peak doubles the estimate; a second reaches the sample.
        assert!((e.estimate_ns(1_000, DECAY).unwrap() - 60e6).abs() < 1.0);
        e.observe(Duration::from_millis(100), 1_000, DECAY);
        assert!((e.estimate_ns(1_000, DECAY).unwrap() - 100e6).abs() < 1.0);
        // A fast sample 1 s later moves the estimate only part of the way (decay 10 s).
        e.observe(Duration::from_millis(1), 1_000_000_000, DECAY);
        let est = e.estimate_ns(1_000_000_000, DECAY).unwrap();
        assert!(est > 80e6 && est < 100e6, "{est}");
        // Unused for a long time, the estimate decays toward zero.
        assert!(e.estimate_ns(100_000_000_000, DECAY).unwrap() < 1e6);
    }

    #[test]
    fn a_peak_is_forgotten_after_tens_of_fast_responses() {
        let e = PeakEwma::new(0);
        warm(&e, Duration::from_millis(1));
        for _ in 0..6 {
            e.observe(Duration::from_millis(50), 1_000, DECAY);
        }
        // 200 responses of 1 ms, 250 µs apart (4,000/s): pure time decay would keep ~49 ms.
        let mut now = 1_000;
        for _ in 0..200 {
            now += 250_000;
            e.observe(Duration::from_millis(1), now, DECAY);
        }
        let est = e.estimate_ns(now, DECAY).unwrap();
        assert!(est < 2e6, "estimate {est} ns still near the peak");
    }

    #[test]
    fn counts_in_flight() {
        let e = PeakEwma::new(0);
        e.start();
        e.start();
        assert_eq!(e.in_flight(), 2);
        e.finish();
        e.finish();
        assert_eq!(e.in_flight(), 0);
    }
}
