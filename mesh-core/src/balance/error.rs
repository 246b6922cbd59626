//! What a balancer reports: the no-endpoint error and per-endpoint stats.

use std::{fmt, net::SocketAddr, time::Duration};

use serde::Serialize;

use crate::{ServiceName, discover::DiscoveryError, endpoint::Labels, outlier::HealthState};

/// Why a request found no endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEndpointsReason {
    /// Discovery answered with an empty set.
    Empty,
    /// Discovery has not answered yet.
    Unresolved,
    /// Discovery failed (before ever finding endpoints, or after they were all removed).
    Discovery(DiscoveryError),
    /// Discovery lists this many endpoints, and every one fails its active health checks.
    Unhealthy(usize),
}

/// No endpoint is available for a service: the request was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NoEndpoints {
    /// The service.
    pub service: ServiceName,
    /// How long the request waited for one to appear.
    pub waited: Duration,
    /// Why there is none.
    pub reason: NoEndpointsReason,
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no endpoints for service {:?}", self.service.as_str())?;
        if !self.waited.is_zero() {
            write!(f, " after waiting {}", crate::duration::format(self.waited))?;
        }
        match &self.reason {
            NoEndpointsReason::Empty => write!(f, ": discovery lists none"),
            NoEndpointsReason::Unhealthy(n) => {
                write!(
                    f,
                    ": all {n} endpoints discovery lists fail their health checks"
                )
            }
            NoEndpointsReason::Unresolved => write!(f, ": discovery has not answered"),
            NoEndpointsReason::Discovery(e) => write!(f, ": {e}"),
        }
    }
}

/// What the balancer knows about one endpoint right now.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStats {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Its weight.
    pub weight: u32,
    /// Its labels.
    pub labels: Labels,
    /// Requests sent and not yet answered.
    pub in_flight: usize,
    /// The Peak-EWMA latency estimate (kept under every policy); `None` until it answers.
    #[serde(with = "crate::duration::serde_opt")]
    pub ewma_latency: Option<Duration>,
    /// In rotation, ejected, or being probed.
    pub health: HealthState,
    /// For an ejected endpoint: time until its probe.
    #[serde(with = "crate::duration::serde_opt")]
    pub probe_in: Option<Duration>,
    /// Successes and failures in the success-rate window.
    pub window: (u64, u64),
    /// Times it was ejected (first ejections and failed probes) since it joined the set.
    pub ejections: u64,
    /// Times a probe re-admitted it since it joined the set.
    pub readmissions: u64,
    /// Responses since it joined the set: (successes, endpoint failures), as outlier
    /// detection classified them.
    pub responses: (u64, u64),
}
