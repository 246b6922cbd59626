//! The two kinds of policy, split as Istio splits them.
//!
//! - [`RoutePolicy`]: what one **route** to a destination does with a request — its timeout
//!   and retries. Istio writes it in a VirtualService's `http` routes (with matches, weights,
//!   faults, mirrors and header rewrites, which [`crate::route`] adds).
//! - [`DestinationPolicy`]: how the **endpoints** of a destination (or of one of its subsets)
//!   are reached — load balancing and outlier detection, connection and request limits, the
//!   service circuit breaker, TLS, and the retry budget every route shares. Istio writes it in
//!   a DestinationRule's `trafficPolicy`.
//!
//! A service configured in code ([`MeshBuilder::service_with`](crate::MeshBuilder::service_with))
//! or through an endpoints file takes a [`ServiceConfig`]: its default route's policy and its
//! destination policy. Istio documents, when present, override them: a VirtualService route's
//! `timeout` and `retries`, a DestinationRule's `trafficPolicy` blocks (whole blocks, as Istio
//! merges them).
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::{DestinationPolicy, RoutePolicy, ServiceConfig, balance::{BalanceConfig, LbPolicy}};
//!
//! let config = ServiceConfig {
//!     route: RoutePolicy { timeout: Some(Duration::from_secs(2)), ..RoutePolicy::default() },
//!     destination: DestinationPolicy {
//!         balance: BalanceConfig { policy: LbPolicy::RoundRobin, ..BalanceConfig::default() },
//!         ..DestinationPolicy::default()
//!     },
//! };
//! config.validate().unwrap();
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    balance::BalanceConfig,
    breaker::BreakerPolicy,
    discover::health::HealthCheckPolicy,
    limit::LimitPolicy,
    policy_error::PolicyError,
    retry::{BudgetPolicy, RetryPolicy},
    tls::ClientTlsPolicy,
};

/// Which HTTP version is spoken to a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, a pool of connections per endpoint (the default, as for Istio
    /// ports named `http`).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), requests multiplexed on one connection per endpoint
    /// (Istio ports named `http2` or `grpc`).
    Http2,
}

/// Route-level policy: the overall timeout and the retries of one route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RoutePolicy {
    /// Overall request timeout, retries included (none by default, as in Istio and Linkerd).
    #[serde(with = "crate::duration::serde_opt")]
    pub timeout: Option<Duration>,
    /// Retries, backoff, per-try timeout, hedging.
    pub retries: RetryPolicy,
}

impl RoutePolicy {
    /// Checks every policy; the error names the field (`retries.perTryTimeout`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::new("timeout", "must be greater than zero"));
        }
        self.retries.validate().map_err(|e| e.within("retries"))
    }
}

/// Destination-level policy: how the endpoints of a destination (or of a subset) are reached.
/// `protocol` and `healthCheck` apply to a service as a whole (a subset has its service's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationPolicy {
    /// Load balancing and outlier ejection.
    pub balance: BalanceConfig,
    /// HTTP version to the endpoints.
    pub protocol: Protocol,
    /// Concurrency, queue and rate limits.
    pub limits: LimitPolicy,
    /// A service-level circuit breaker (off by default).
    pub breaker: Option<BreakerPolicy>,
    /// mTLS to the endpoints.
    pub tls: ClientTlsPolicy,
    /// Active health checks of the endpoints (off by default, as in Istio: outlier ejection
    /// is the passive check that is always on).
    pub health_check: Option<HealthCheckPolicy>,
    /// The retry budget shared by every route to this destination.
    pub retry_budget: BudgetPolicy,
    /// Time allowed for a connection (and its TLS handshake); `None`: the client's setting.
    #[serde(with = "crate::duration::serde_opt")]
    pub connect_timeout: Option<Duration>,
    /// Idle pooled connections are closed after this; `None`: the client's setting.
    #[serde(with = "crate::duration::serde_opt")]
    pub idle_timeout: Option<Duration>,
}

impl DestinationPolicy {
    /// Checks every policy; the error names the field (`balance.outlierDetection.interval`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.balance.validate().map_err(|e| e.within("balance"))?;
        self.limits.validate().map_err(|e| e.within("limits"))?;
        if let Some(b) = &self.breaker {
            b.validate().map_err(|e| e.within("breaker"))?;
        }
        if let Some(h) = &self.health_check {
            h.validate().map_err(|e| e.within("healthCheck"))?;
        }
        self.retry_budget
            .validate()
            .map_err(|e| e.within("retryBudget"))
    }
}

/// The policies of a service configured without Istio documents: its default route and its
/// destination. Every field has a default; see each type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// The policy of the route requests take when no VirtualService routes them.
    pub route: RoutePolicy,
    /// How the service's endpoints are reached, unless a DestinationRule says otherwise.
    pub destination: DestinationPolicy,
}

impl ServiceConfig {
    /// Checks every policy; the error names the field (`route.retries.backoff.max`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.route.validate().map_err(|e| e.within("route"))?;
        self.destination
            .validate()
            .map_err(|e| e.within("destination"))
    }
}
