//! A weighted choice among a route's backends (linkerd2-proxy's `distribute`, Istio's
//! `route[].weight`).

use super::{BackendRef, Headers};

/// One backend of a route with its weight and its own header operations (applied after the
/// route's, as Istio does).
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedBackend {
    /// Where to.
    pub backend: BackendRef,
    /// Relative weight.
    pub weight: u32,
    /// Header operations for requests sent to this backend.
    pub headers: Headers,
}

/// The backends of a route with their relative weights: a backend receives
/// `weight / total` of the requests. Built only with a positive total; backends of weight 0
/// are kept (so that explanations show them) but never chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    backends: Vec<WeightedBackend>,
    /// Running sums of the weights (empty when there is a single backend).
    cumulative: Vec<u64>,
}

impl Distribution {
    /// Everything to one backend.
    pub fn single(backend: BackendRef) -> Self {
        Self {
            backends: vec![WeightedBackend {
                backend,
                weight: 1,
                headers: Headers::default(),
            }],
            cumulative: Vec::new(),
        }
    }

    /// Weighted backends; `None` when there are none or every weight is 0. A single backend
    /// receives everything whatever its weight (Istio).
    pub fn weighted(backends: Vec<WeightedBackend>) -> Option<Self> {
        match backends.len() {
            0 => None,
            1 => Some(Self {
                backends,
                cumulative: Vec::new(),
            }),
            _ => {
                let cumulative: Vec<u64> = backends
                    .iter()
                    .scan(0u64, |sum, b| {
                        *sum += u64::from(b.weight);
                        Some(*sum)
                    })
                    .collect();
                (cumulative.last().copied().unwrap_or(0) > 0).then_some(Self {
                    backends,
                    cumulative,
                })
            }
        }
    }

    /// The backends, in the order written.
    pub fn backends(&self) -> &[WeightedBackend] {
        &self.backends
    }

    /// The share of requests backend `i` receives (0 to 1).
    pub fn share(&self, i: usize) -> f64 {
        match self.cumulative.last() {
            None => 1.0,
            Some(&total) => f64::from(self.backends[i].weight) / total as f64,
        }
    }

    /// Draws the backend for one request (its index).
    pub fn pick(&self) -> usize {
        match self.cumulative.last() {
            None => 0,
            Some(&total) => {
                let r = fastrand::u64(..total);
                self.cumulative.partition_point(|c| *c <= r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(subset: &str, weight: u32) -> WeightedBackend {
        WeightedBackend {
            backend: BackendRef::new("reviews", None, Some(subset)),
            weight,
            headers: Headers::default(),
        }
    }

    #[test]
    fn weights_are_relative_and_zero_never_chosen() {
        let d = Distribution::weighted(vec![w("v1", 9), w("v2", 1), w("v3", 0)]).unwrap();
        let mut counts = [0usize; 3];
        for _ in 0..100_000 {
            counts[d.pick()] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((88_500..91_500).contains(&counts[0]), "{counts:?}");
        assert_eq!(d.share(0), 0.9);
        assert!(Distribution::weighted(vec![w("v1", 0), w("v2", 0)]).is_none());
        assert!(Distribution::weighted(vec![]).is_none());
        let one = Distribution::weighted(vec![w("v1", 0)]).unwrap();
        assert_eq!((one.pick(), one.share(0)), (0, 1.0));
    }
}
