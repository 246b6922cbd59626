//! Per-destination request counters and the latency histogram: the only metrics recorded on
//! the request path (everything else is read from the layers' own counters at scrape time).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::Serialize;

/// Upper bounds of the latency histogram's buckets, in seconds: Linkerd's `response_latency`
/// buckets from 0.5 ms to 10 s, coarser above 1 s (a mesh call slower than that is a timeout
/// story, not a latency one).
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];

/// gRPC status code names, by code (0–16), as `grpc-status` label values.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC codes that say the endpoint (not the caller) failed: the same set outlier ejection
/// counts (`mesh_core::classify`).
const GRPC_FAILURE_CODES: [u16; 6] = [2, 4, 12, 13, 14, 15];

/// Why a request got no response: the error label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The service had no endpoint in rotation.
    NoEndpoints,
    /// Shed by a concurrency or queue limit.
    Overloaded,
    /// Refused by the client-side rate limit.
    RateLimited,
    /// The overall timeout (or the inherited deadline) expired.
    Timeout,
    /// The service-level circuit breaker was open.
    CircuitOpen,
    /// No connection could be made (refused, unreachable, TLS handshake).
    Connect,
    /// The caller dropped the request, or a stream ended without a status.
    Cancelled,
    /// Anything else (protocol errors, bad requests, configuration).
    Other,
}

impl ErrorKind {
    const ALL: [ErrorKind; 8] = [
        Self::NoEndpoints,
        Self::Overloaded,
        Self::RateLimited,
        Self::Timeout,
        Self::CircuitOpen,
        Self::Connect,
        Self::Cancelled,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::NoEndpoints => "no_endpoints",
            Self::Overloaded => "overloaded",
            Self::RateLimited => "rate_limited",
            Self::Timeout => "timeout",
            Self::CircuitOpen => "circuit_open",
            Self::Connect => "connect",
            Self::Cancelled => "cancelled",
            Self::Other => "error",
        }
    }
}

const HTTP_KEYS: usize = 5;
const GRPC_KEYS: usize = 17;
const KEYS: usize = HTTP_KEYS + GRPC_KEYS + ErrorKind::ALL.len();

/// How one request ended, as a bounded label: an HTTP status class, a gRPC code, or an
/// [`ErrorKind`]. Thirty values in all, so a destination has at most thirty request series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusKey(u8);

impl StatusKey {
    /// An HTTP response with this status.
    pub fn http(status: u16) -> Self {
        Self((status / 100).clamp(1, 5) as u8 - 1)
    }

    /// A gRPC call that ended with this code (unknown codes count as `UNKNOWN`, as gRPC says).
    pub fn grpc(code: u16) -> Self {
        let code = if usize::from(code) < GRPC_KEYS {
            code
        } else {
            2
        };
        Self((HTTP_KEYS + usize::from(code)) as u8)
    }

    /// A request that got no response.
    pub fn error(kind: ErrorKind) -> Self {
        Self((HTTP_KEYS + GRPC_KEYS + kind as usize) as u8)
    }

    /// The `status` label value: `2xx`, `UNAVAILABLE`, `timeout`, ...
    pub fn label(self) -> &'static str {
        const HTTP: [&str; HTTP_KEYS] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let i = usize::from(self.0);
        if i < HTTP_KEYS {
            HTTP[i]
        } else if i < HTTP_KEYS + GRPC_KEYS {
            GRPC_CODE_NAMES[i - HTTP_KEYS]
        } else {
            ErrorKind::ALL[i - HTTP_KEYS - GRPC_KEYS].as_str()
        }
    }

    /// The `outcome` label value: `success` (the endpoint answered and did its part: 1xx–4xx,
    /// gRPC codes that blame the caller), `failure` (5xx, gRPC UNKNOWN, DEADLINE_EXCEEDED,
    /// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) or `error` (no response at all).
    pub fn outcome(self) -> &'static str {
        let i = usize::from(self.0);
        if i < HTTP_KEYS {
            if i == 4 { "failure" } else { "success" }
        } else if i < HTTP_KEYS + GRPC_KEYS {
            if GRPC_FAILURE_CODES.contains(&((i - HTTP_KEYS) as u16)) {
                "failure"
            } else {
                "success"
            }
        } else {
            "error"
        }
    }

    fn all() -> impl Iterator<Item = StatusKey> {
        (0..KEYS as u8).map(StatusKey)
    }
}

/// Requests of one destination by [`StatusKey`], and their latency. Lock-free: recording is
/// three atomic adds and a bucket search, on a stripe of counters chosen per thread so that
/// the runtime's worker threads do not fight over one cache line per request.
///
/// Why not prometheus-client's `Family<_, Counter>` and `Histogram`: a `Family` looks its label
/// set up in a `RwLock`ed map on every increment, and its `Histogram` takes a `Mutex` per
/// observation; here the label values are fixed per destination, so plain atomics suffice and
/// the collector adds the stripes up at scrape time.
#[derive(Debug)]
pub struct RequestMetrics {
    stripes: Box<[Stripe; STRIPES]>,
}

/// Stripes per destination: enough for the worker threads of a small runtime to mostly land on
/// different ones; a larger runtime shares them (still correct, just more contended).
const STRIPES: usize = 4;

/// One thread's share of the counters, on cache lines of its own.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe {
    counts: [AtomicU64; KEYS],
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_ns: AtomicU64,
}

impl Default for Stripe {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

thread_local! {
    /// This thread's stripe, assigned round robin as threads first record.
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed) % STRIPES
    };
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
        }
    }
}

impl RequestMetrics {
    fn stripe(&self) -> &Stripe {
        let i = STRIPE.try_with(|i| *i).unwrap_or(0);
        &self.stripes[i]
    }

    /// Counts one request that ended as `key`.
    pub fn count(&self, key: StatusKey) {
        self.stripe().counts[usize::from(key.0)].fetch_add(1, Relaxed);
    }

    /// Records one request's latency (the time to its response head, or to its error).
    pub fn observe(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len() - 1);
        let stripe = self.stripe();
        stripe.buckets[i].fetch_add(1, Relaxed);
        stripe
            .sum_ns
            .fetch_add(latency.as_nanos().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// The counters, leaving out statuses never seen.
    pub fn statuses(&self) -> Vec<StatusCount> {
        StatusKey::all()
            .filter_map(|k| {
                let i = usize::from(k.0);
                let count = self.stripes.iter().map(|s| s.counts[i].load(Relaxed)).sum();
                (count > 0).then(|| StatusCount {
                    status: k.label(),
                    outcome: k.outcome(),
                    count,
                })
            })
            .collect()
    }

    /// The latency histogram, cumulative as Prometheus wants it.
    pub fn latency(&self) -> LatencyHistogram {
        let mut cumulative = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .enumerate()
            .map(|(i, le)| {
                cumulative += self
                    .stripes
                    .iter()
                    .map(|s| s.buckets[i].load(Relaxed))
                    .sum::<u64>();
                (*le, cumulative)
            })
            .collect();
        let sum_ns: u64 = self.stripes.iter().map(|s| s.sum_ns.load(Relaxed)).sum();
        LatencyHistogram {
            buckets,
            count: cumulative,
            sum_seconds: sum_ns as f64 / 1e9,
        }
    }
}

/// A request whose status is only known later (a gRPC response whose `grpc-status` comes in
/// the trailers): the protocol crate finishes it when the status arrives; dropped unfinished
/// (every clone), it counts as [`ErrorKind::Cancelled`]. Cheap to clone (it travels in
/// response extensions, which need `Clone`); only the first [`finish`](Self::finish) counts.
#[derive(Clone, Debug)]
pub struct PendingStatus {
    inner: Arc<Pending>,
}

#[derive(Debug)]
struct Pending {
    metrics: Arc<RequestMetrics>,
    done: AtomicBool,
}

impl PendingStatus {
    /// A pending status to be counted in `metrics`.
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        Self {
            inner: Arc::new(Pending {
                metrics,
                done: AtomicBool::new(false),
            }),
        }
    }

    /// Counts the final status (once, whichever clone finishes first).
    pub fn finish(&self, key: StatusKey) {
        if !self.inner.done.swap(true, Relaxed) {
            self.inner.metrics.count(key);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !*self.done.get_mut() {
            self.metrics.count(StatusKey::error(ErrorKind::Cancelled));
        }
    }
}

/// Requests that ended with one status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusCount {
    /// `2xx`, `UNAVAILABLE`, `timeout`, ...
    pub status: &'static str,
    /// `success`, `failure` or `error` (see [`StatusKey::outcome`]).
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// A latency histogram: cumulative buckets by upper bound in seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyHistogram {
    /// `(le, requests at most that slow)`, the last bound is +Inf.
    #[serde(serialize_with = "serialize_buckets")]
    pub buckets: Vec<(f64, u64)>,
    /// Requests observed.
    pub count: u64,
    /// Their total latency.
    pub sum_seconds: f64,
}

fn serialize_buckets<S: serde::Serializer>(b: &[(f64, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    // JSON has no infinity: the last bound is written as the string "+Inf".
    let mut seq = s.serialize_seq(Some(b.len()))?;
    for (le, n) in b {
        if le.is_finite() {
            seq.serialize_element(&(le, n))?;
        } else {
            seq.serialize_element(&("+Inf", n))?;
        }
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_label_and_classify() {
        assert_eq!(StatusKey::http(204).label(), "2xx");
        assert_eq!(StatusKey::http(503).outcome(), "failure");
        assert_eq!(StatusKey::http(404).outcome(), "success");
        assert_eq!(StatusKey::grpc(14).label(), "UNAVAILABLE");
        assert_eq!(StatusKey::grpc(14).outcome(), "failure");
        assert_eq!(StatusKey::grpc(3).outcome(), "success");
        assert_eq!(StatusKey::grpc(99).label(), "UNKNOWN");
        assert_eq!(StatusKey::error(ErrorKind::Timeout).label(), "timeout");
        assert_eq!(StatusKey::error(ErrorKind::Other).outcome(), "error");
        assert_eq!(StatusKey::all().count(), 30);
    }

    #[test]
    fn histogram_is_cumulative() {
        let m = RequestMetrics::default();
        m.observe(Duration::from_micros(300));
        m.observe(Duration::from_millis(3));
        m.observe(Duration::from_secs(60));
        let h = m.latency();
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], (0.0005, 1));
        assert_eq!(h.buckets[3], (0.005, 2));
        assert_eq!(h.buckets.last().unwrap().1, 3);
        assert!((h.sum_seconds - 60.0033).abs() < 1e-6);
    }

    #[test]
    fn pending_status_counts_once() {
        let m = Arc::new(RequestMetrics::default());
        let p = PendingStatus::new(m.clone());
        p.clone().finish(StatusKey::grpc(0));
        p.finish(StatusKey::grpc(14));
        drop(p);
        drop(PendingStatus::new(m.clone()));
        let s = m.statuses();
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|c| c.count == 1));
        assert!(s.iter().any(|c| c.status == "cancelled"));
    }
}
