//! One immutable generation of a balancer's endpoints, and the choice of one of them.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use super::{
    ewma::PeakEwma,
    ring::{Ring, hash},
};
use crate::{discover::DiscoveryError, endpoint::Endpoint};

/// An endpoint with its client and its load.
pub(crate) struct Slot<S> {
    pub(crate) endpoint: Endpoint,
    pub(crate) service: S,
    /// Shared with the slot this one replaced, when an endpoint's metadata changed, so
    /// in-flight requests keep counting against the same state.
    pub(crate) load: Arc<PeakEwma>,
}

/// The compiled policy.
#[derive(Clone, Debug)]
pub(crate) enum Picker {
    P2c { decay_ns: f64, bias: f64 },
    RoundRobin,
    Weighted,
    RingHash { header: http::HeaderName },
}

pub(crate) struct Table<S> {
    /// Whether discovery has answered at least once.
    pub(crate) resolved: bool,
    pub(crate) slots: Box<[Arc<Slot<S>>]>,
    /// Round-robin cursor (also the fallback for ring hash without a key).
    cursor: AtomicUsize,
    /// Prefix sums of weights, for `Weighted`.
    cumulative: Box<[u64]>,
    ring: Ring,
    pub(crate) last_error: Option<DiscoveryError>,
}

impl<S> Table<S> {
    pub(crate) fn unresolved() -> Self {
        Self {
            resolved: false,
            slots: Box::new([]),
            cursor: AtomicUsize::new(0),
            cumulative: Box::new([]),
            ring: Ring::default(),
            last_error: None,
        }
    }

    pub(crate) fn new(
        slots: Vec<Arc<Slot<S>>>,
        picker: &Picker,
        min_ring_size: usize,
        last_error: Option<DiscoveryError>,
    ) -> Self {
        let cumulative = match picker {
            Picker::Weighted => slots
                .iter()
                .scan(0u64, |sum, s| {
                    *sum += u64::from(s.endpoint.weight);
                    Some(*sum)
                })
                .collect(),
            _ => Box::new([]) as Box<[u64]>,
        };
        let ring = match picker {
            Picker::RingHash { .. } => {
                let eps: Vec<(SocketAddr, u32)> = slots
                    .iter()
                    .map(|s| (s.endpoint.addr, s.endpoint.weight))
                    .collect();
                Ring::build(&eps, min_ring_size)
            }
            _ => Ring::default(),
        };
        Self {
            resolved: true,
            // Start round robin at a random place so that many clients do not all begin
            // with the first endpoint.
            cursor: AtomicUsize::new(fastrand::usize(..slots.len().max(1))),
            slots: slots.into(),
            cumulative,
            ring,
            last_error,
        }
    }

    /// Chooses an endpoint for a request, or `None` when there is none.
    pub(crate) fn pick(
        &self,
        picker: &Picker,
        headers: &http::HeaderMap,
        now_ns: u64,
    ) -> Option<&Arc<Slot<S>>> {
        let n = self.slots.len();
        if n <= 1 {
            return self.slots.first();
        }
        let i = match picker {
            Picker::P2c { decay_ns, bias } => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (la, lb) = (&self.slots[a].load, &self.slots[b].load);
                // An endpoint with no response yet borrows its partner's estimate, so the two
                // are compared by in-flight requests alone (see ewma.rs).
                let (ea, eb) = match (
                    la.estimate_ns(now_ns, *decay_ns),
                    lb.estimate_ns(now_ns, *decay_ns),
                ) {
                    (Some(x), Some(y)) => (x, y),
                    (Some(x), None) => (x, x),
                    (None, Some(y)) => (y, y),
                    (None, None) => (1.0, 1.0),
                };
                let ca = ea * penalty(la.in_flight(), *bias);
                let cb = eb * penalty(lb.in_flight(), *bias);
                if cb < ca { b } else { a }
            }
            Picker::RoundRobin => self.cursor.fetch_add(1, Relaxed) % n,
            Picker::Weighted => {
                let total = self.cumulative[n - 1];
                let r = fastrand::u64(..total);
                self.cumulative.partition_point(|c| *c <= r)
            }
            Picker::RingHash { header } => match headers.get(header) {
                Some(v) => self.ring.lookup(hash(v.as_bytes())).unwrap_or(0),
                None => fastrand::usize(..n),
            },
        };
        self.slots.get(i)
    }
}

/// `(in_flight + 1)^bias`: Envoy's `active_request_bias` applied to the Peak-EWMA cost.
fn penalty(in_flight: usize, bias: f64) -> f64 {
    let n = (in_flight + 1) as f64;
    if bias == 1.0 { n } else { n.powf(bias) }
}

impl<S> fmt::Debug for Table<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("resolved", &self.resolved)
            .field(
                "endpoints",
                &self
                    .slots
                    .iter()
                    .map(|s| s.endpoint.addr)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}
