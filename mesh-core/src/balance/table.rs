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
    tried::TriedEndpoints,
};
use crate::{
    discover::DiscoveryError,
    endpoint::Endpoint,
    outlier::{Health, Outlier},
};

/// An endpoint with its client, its load and its health.
pub(crate) struct Slot<S> {
    pub(crate) endpoint: Endpoint,
    pub(crate) service: S,
    /// Shared with the slot this one replaced, when an endpoint's metadata changed, so
    /// in-flight requests keep counting against the same state.
    pub(crate) load: Arc<PeakEwma>,
    pub(crate) health: Arc<Health>,
    pub(crate) outlier: Arc<Outlier>,
}

/// The compiled policy.
#[derive(Clone, Debug)]
pub(crate) enum Picker {
    P2c { decay_ns: f64, bias: f64 },
    RoundRobin,
    Weighted,
    Random,
    RingHash { on: HashKey },
}

/// The compiled key of a consistent-hash picker.
#[derive(Clone, Debug)]
pub(crate) enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    /// The client's own address: one value per process.
    Source(u64),
}

impl HashKey {
    /// The hash of the request's key, if it has one.
    fn of(&self, headers: &http::HeaderMap, uri: &http::Uri) -> Option<u64> {
        match self {
            HashKey::Header(h) => headers.get(h).map(|v| hash(v.as_bytes())),
            HashKey::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k == name).then(|| hash(v.as_bytes()))
                }),
            HashKey::Query(name) => uri.query().and_then(|q| {
                q.split('&').find_map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (k == name).then(|| hash(v.as_bytes()))
                })
            }),
            HashKey::Source(h) => Some(*h),
        }
    }
}

pub(crate) struct Table<S> {
    /// Whether discovery has answered at least once.
    pub(crate) resolved: bool,
    pub(crate) slots: Box<[Arc<Slot<S>>]>,
    /// Round-robin cursor.
    cursor: AtomicUsize,
    /// Prefix sums of weights, for `Weighted`.
    cumulative: Box<[u64]>,
    ring: Ring,
    pub(crate) last_error: Option<DiscoveryError>,
    /// Endpoints discovery lists that health checks keep out of `slots`.
    pub(crate) unhealthy: usize,
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
            unhealthy: 0,
        }
    }

    pub(crate) fn new(
        slots: Vec<Arc<Slot<S>>>,
        picker: &Picker,
        min_ring_size: usize,
        last_error: Option<DiscoveryError>,
        unhealthy: usize,
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
            unhealthy,
        }
    }

    /// Chooses an endpoint for a request, or `None` when there is none. Ejected endpoints are
    /// skipped (one whose ejection is over gets this request as its probe), and so are endpoints
    /// an earlier attempt of the same request used, while others are left.
    pub(crate) fn pick(
        &self,
        picker: &Picker,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        now_ns: u64,
        outlier: &Outlier,
        tried: Option<&TriedEndpoints>,
    ) -> Option<&Arc<Slot<S>>> {
        let n = self.slots.len();
        let tried = tried.filter(|t| !t.is_empty());
        if n <= 1 || (!outlier.any_ejected() && tried.is_none()) {
            // The fast path: every endpoint is a candidate.
            return match n {
                0 => None,
                1 => self.slots.first(),
                _ => self
                    .slots
                    .get(self.choose(picker, headers, uri, now_ns, None)),
            };
        }
        let untried = |s: &Slot<S>| tried.is_none_or(|t| !t.contains(&s.endpoint.addr));
        if outlier.any_ejected() {
            if let Some(probe) = self
                .slots
                .iter()
                .find(|s| untried(s) && s.health.try_probe(now_ns))
            {
                return Some(probe);
            }
        }
        let mut subset: Vec<usize> = (0..n)
            .filter(|&i| self.slots[i].health.is_active() && untried(&self.slots[i]))
            .collect();
        if subset.is_empty() {
            // Everything left was tried already: any endpoint in rotation will do.
            subset = (0..n)
                .filter(|&i| self.slots[i].health.is_active())
                .collect();
        }
        if subset.is_empty() {
            outlier.panic_pick();
            return self
                .slots
                .get(self.choose(picker, headers, uri, now_ns, None));
        }
        self.slots
            .get(self.choose(picker, headers, uri, now_ns, Some(&subset)))
    }

    /// The policy's choice among all endpoints, or among `subset` (indices, non-empty).
    fn choose(
        &self,
        picker: &Picker,
        headers: &http::HeaderMap,
        uri: &http::Uri,
        now_ns: u64,
        subset: Option<&[usize]>,
    ) -> usize {
        let n = subset.map_or(self.slots.len(), <[usize]>::len);
        let at = |k: usize| subset.map_or(k, |s| s[k]);
        if n == 1 {
            return at(0);
        }
        match picker {
            Picker::P2c { decay_ns, bias } => {
                let k1 = fastrand::usize(..n);
                let mut k2 = fastrand::usize(..n - 1);
                if k2 >= k1 {
                    k2 += 1;
                }
                let (a, b) = (at(k1), at(k2));
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
            Picker::RoundRobin => at(self.cursor.fetch_add(1, Relaxed) % n),
            Picker::Weighted => match subset {
                None => {
                    let total = self.cumulative[n - 1];
                    let r = fastrand::u64(..total);
                    self.cumulative.partition_point(|c| *c <= r)
                }
                Some(s) => {
                    let total: u64 = s
                        .iter()
                        .map(|&i| u64::from(self.slots[i].endpoint.weight))
                        .sum();
                    let mut r = fastrand::u64(..total.max(1));
                    for &i in s {
                        let w = u64::from(self.slots[i].endpoint.weight);
                        if r < w {
                            return i;
                        }
                        r -= w;
                    }
                    s[s.len() - 1]
                }
            },
            Picker::Random => at(fastrand::usize(..n)),
            Picker::RingHash { on } => match on.of(headers, uri) {
                Some(h) => self
                    .ring
                    .lookup_where(h, |i| subset.is_none_or(|s| s.contains(&i)))
                    .unwrap_or_else(|| at(0)),
                None => at(fastrand::usize(..n)),
            },
        }
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
