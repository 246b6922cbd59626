//! A balancer's settings and how it makes endpoint services.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::LbPolicy;
use crate::{endpoint::Endpoint, outlier::OutlierDetection, policy_error::PolicyError};

/// How long a request waits for a service's discovery to answer for the first time (e.g. the
/// first DNS lookup of a name): 5 s, the resolv.conf lookup `timeout` default.
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of one balancer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BalanceConfig {
    /// How endpoints are chosen.
    pub policy: LbPolicy,
    /// How long a request waits for an endpoint when discovery says there are none. Default 0:
    /// fail fast with [`NoEndpoints`](super::NoEndpoints), so callers see the problem instead of a hang.
    #[serde(with = "crate::duration::serde")]
    pub wait_for_endpoints: Duration,
    /// How long a request waits for discovery's first answer ([`DEFAULT_DISCOVERY_TIMEOUT`]).
    #[serde(with = "crate::duration::serde")]
    pub discovery_timeout: Duration,
    /// Per-endpoint outlier ejection (on by default; `null` turns it off).
    pub outlier_detection: Option<OutlierDetection>,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            policy: LbPolicy::default(),
            wait_for_endpoints: Duration::ZERO,
            discovery_timeout: DEFAULT_DISCOVERY_TIMEOUT,
            outlier_detection: Some(OutlierDetection::default()),
        }
    }
}

impl BalanceConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(od) = &self.outlier_detection {
            od.validate().map_err(|e| e.within("outlierDetection"))?;
        }
        if let LbPolicy::RingHash { min_ring_size, .. }
        | LbPolicy::ConsistentHash { min_ring_size, .. } = &self.policy
        {
            if *min_ring_size == 0 {
                return Err(PolicyError::new("policy.minRingSize", "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Builds the service that talks to one endpoint (its connection pool, its TLS identity).
/// Implemented for every `Fn(&Endpoint) -> S`.
pub trait NewEndpoint<S>: Send + Sync + 'static {
    /// A service for `endpoint`.
    fn new_endpoint(&self, endpoint: &Endpoint) -> S;
}

impl<S, F> NewEndpoint<S> for F
where
    F: Fn(&Endpoint) -> S + Send + Sync + 'static,
{
    fn new_endpoint(&self, endpoint: &Endpoint) -> S {
        self(endpoint)
    }
}
