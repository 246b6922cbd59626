//! Endpoints: the concrete addresses behind a logical service.
//!
//! An [`Endpoint`] is what discovery produces and what balancers choose between: a socket address,
//! a weight, labels (Istio's workload labels, e.g. `version=v2`, `zone=a`, which subsets select
//! on) and, optionally, the identity the workload must prove when mTLS is on. An [`EndpointSet`]
//! is one immutable snapshot of a service's endpoints.
//!
//! ```
//! use mesh_core::endpoint::{Endpoint, EndpointSet};
//!
//! let v1 = Endpoint::new("10.0.0.1:9080".parse().unwrap()).label("version", "v1");
//! let v2 = Endpoint::new("10.0.0.2:9080".parse().unwrap()).label("version", "v2").weight(3);
//! let set = EndpointSet::new(vec![v2, v1]).unwrap();
//! assert_eq!(set.len(), 2);
//! assert_eq!(set.iter().next().unwrap().labels.get("version"), Some("v1")); // sorted by address
//! ```

use std::{collections::BTreeMap, fmt, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

/// Weight of an endpoint that does not say (every endpoint counts the same).
pub const DEFAULT_WEIGHT: u32 = 1;

/// Workload labels of an endpoint (`version: v2`, `zone: a`). Ordered, so equal sets compare equal.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(Arc<BTreeMap<String, String>>);

impl Labels {
    /// The value of a label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Sets a label.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        Arc::make_mut(&mut self.0).insert(key.into(), value.into());
    }

    /// All labels, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether every `key: value` of `selector` is present (an empty selector matches everything),
    /// the semantics of a Kubernetes `matchLabels` / Istio subset `labels`.
    pub fn matches<'a>(&self, selector: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
        selector.into_iter().all(|(k, v)| self.get(k) == Some(v))
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Labels(Arc::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        ))
    }
}

/// One concrete instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative share of traffic for weight-aware balancers (≥ 1).
    pub weight: u32,
    /// Workload labels.
    pub labels: Labels,
    /// The identity this endpoint must present under mTLS, when known.
    pub identity: Option<SpiffeId>,
}

impl Endpoint {
    /// An endpoint with weight 1, no labels and no expected identity.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: DEFAULT_WEIGHT,
            labels: Labels::default(),
            identity: None,
        }
    }

    /// Sets the weight (0 is raised to 1: a zero-weight endpoint would never be chosen, which
    /// is what removing it is for).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key, value);
        self
    }

    /// Sets the identity the endpoint must present.
    pub fn identity(mut self, id: SpiffeId) -> Self {
        self.identity = Some(id);
        self
    }
}

/// Two endpoints in one set share an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {addr} is listed twice")]
pub struct DuplicateEndpoint {
    /// The repeated address.
    pub addr: SocketAddr,
}

/// An immutable snapshot of a service's endpoints, sorted by address, addresses unique.
/// Cloning is one reference-count increment.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EndpointSet(Arc<[Endpoint]>);

impl EndpointSet {
    /// Builds a set; two endpoints with one address are an error.
    pub fn new(mut endpoints: Vec<Endpoint>) -> Result<Self, DuplicateEndpoint> {
        endpoints.sort_by_key(|e| e.addr);
        if let Some(w) = endpoints.windows(2).find(|w| w[0].addr == w[1].addr) {
            return Err(DuplicateEndpoint { addr: w[0].addr });
        }
        Ok(Self(endpoints.into()))
    }

    /// The empty set.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Endpoints in address order.
    pub fn iter(&self) -> std::slice::Iter<'_, Endpoint> {
        self.0.iter()
    }

    /// The endpoint at `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&Endpoint> {
        self.0
            .binary_search_by_key(addr, |e| e.addr)
            .ok()
            .map(|i| &self.0[i])
    }

    /// Whether both snapshots are the same allocation (cheaper than `==`).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The subset of endpoints for which `keep` is true.
    pub fn filter(&self, mut keep: impl FnMut(&Endpoint) -> bool) -> Self {
        Self(self.0.iter().filter(|e| keep(e)).cloned().collect())
    }

    /// The subset whose labels match `selector` (Istio `DestinationRule` subsets).
    pub fn select<'a>(
        &self,
        selector: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Self {
        Self(
            self.0
                .iter()
                .filter(|e| e.labels.matches(selector.clone()))
                .cloned()
                .collect(),
        )
    }
}

impl fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|e| e.addr))
            .finish()
    }
}

impl<'a> IntoIterator for &'a EndpointSet {
    type Item = &'a Endpoint;
    type IntoIter = std::slice::Iter<'a, Endpoint>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn set_is_sorted_and_rejects_duplicates() {
        let set = EndpointSet::new(vec![ep(3), ep(1), ep(2)]).unwrap();
        let ports: Vec<_> = set.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, [1, 2, 3]);
        assert!(set.get(&ep(2).addr).is_some());
        let err = EndpointSet::new(vec![ep(1), ep(1)]).unwrap_err();
        assert_eq!(err.addr.port(), 1);
    }

    #[test]
    fn labels_select_subsets() {
        let set = EndpointSet::new(vec![
            ep(1).label("version", "v1"),
            ep(2).label("version", "v2").label("zone", "a"),
            ep(3).label("version", "v2").label("zone", "b"),
        ])
        .unwrap();
        assert_eq!(set.select([("version", "v2")]).len(), 2);
        assert_eq!(set.select([("version", "v2"), ("zone", "b")]).len(), 1);
        assert_eq!(set.select([]).len(), 3);
        assert_eq!(ep(9).weight(0).weight, 1);
    }
}
