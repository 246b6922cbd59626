//! The debug snapshot: what the mesh knows, as serde data. The metrics collector encodes the
//! same snapshot, so `/metrics` and `/mesh/debug` never disagree.

use serde::Serialize;

use super::{
    request::{LatencyHistogram, StatusCount},
    server::{CallerCount, InboundSnapshot},
};
use crate::{
    ServiceName, balance::EndpointStats, breaker::BreakerState, limit::LimitCounts,
    outlier::HealthState, retry::RetryCounts, tls::TlsStatus,
};

/// Everything a [`Telemetry`](super::Telemetry) tracks, at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Outbound destinations of every tracked client, one per service name (several clients'
    /// views of one service are merged, see [`DestinationSnapshot::absorb`]).
    pub destinations: Vec<DestinationSnapshot>,
    /// Outbound requests that could not be routed to any destination, by reason.
    pub unroutable: Vec<UnroutableCount>,
    /// Configuration sources (endpoints files) of every tracked mesh.
    pub config: Vec<ConfigSourceSnapshot>,
    /// TLS material of every tracked store.
    pub tls: Vec<TlsStatus>,
    /// Inbound requests by caller identity and authorization decision.
    pub server: Vec<CallerCount>,
    /// Inbound requests by caller identity: final statuses, latency, in flight (recorded by
    /// the servers' metrics layers).
    pub inbound: Vec<InboundSnapshot>,
}

/// What a client knows about one destination: counters, the retry budget, breaker and
/// endpoint states, discovery.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationSnapshot {
    /// The service.
    pub service: ServiceName,
    /// Requests by final status (empty when the client records no metrics).
    pub requests: Vec<StatusCount>,
    /// Time to the response head (or error).
    pub latency: LatencyHistogram,
    /// Requests sent to endpoints and not answered yet.
    pub in_flight: usize,
    /// Requests, retries, hedges, budget exhaustion.
    pub retries: RetryCounts,
    /// Retries the budget allows right now.
    pub retry_budget: f64,
    /// Shed and rate-limited requests.
    pub limits: LimitCounts,
    /// The circuit breaker, if one is configured.
    pub breaker: Option<BreakerState>,
    /// Endpoints with labels, load, EWMA latency, ejection state and next probe time.
    pub endpoints: Vec<EndpointStats>,
    /// The discovery source's view.
    pub discovery: DiscoverySnapshot,
}

impl DestinationSnapshot {
    /// Folds in another client's view of the same service (an application may build several
    /// clients over one mesh): counters add up, endpoints are matched by address (in-flight
    /// and counters add up, the worse health and the higher EWMA win), the breaker shows the
    /// least healthy state, the budget the smallest balance.
    pub fn absorb(&mut self, other: DestinationSnapshot) {
        for c in other.requests {
            match self.requests.iter_mut().find(|m| m.status == c.status) {
                Some(m) => m.count += c.count,
                None => self.requests.push(c),
            }
        }
        for (mine, theirs) in self.latency.buckets.iter_mut().zip(&other.latency.buckets) {
            mine.1 += theirs.1;
        }
        self.latency.count += other.latency.count;
        self.latency.sum_seconds += other.latency.sum_seconds;
        self.in_flight += other.in_flight;
        let (r, o) = (&mut self.retries, other.retries);
        r.requests += o.requests;
        r.retries += o.retries;
        r.hedges += o.hedges;
        r.budget_exhausted += o.budget_exhausted;
        r.not_replayable += o.not_replayable;
        r.retry_overflow += o.retry_overflow;
        self.retry_budget = self.retry_budget.min(other.retry_budget);
        self.limits.shed += other.limits.shed;
        self.limits.rate_limited += other.limits.rate_limited;
        self.limits.queued += other.limits.queued;
        self.breaker = match (self.breaker, other.breaker) {
            (Some(a), Some(b)) => Some(worse_breaker(a, b)),
            (a, b) => a.or(b),
        };
        for e in other.endpoints {
            match self.endpoints.iter_mut().find(|m| m.addr == e.addr) {
                Some(m) => {
                    m.in_flight += e.in_flight;
                    m.ejections += e.ejections;
                    m.readmissions += e.readmissions;
                    m.responses.0 += e.responses.0;
                    m.responses.1 += e.responses.1;
                    m.ewma_latency = m.ewma_latency.max(e.ewma_latency);
                    if health_rank(e.health) > health_rank(m.health) {
                        m.health = e.health;
                        m.probe_in = e.probe_in;
                    }
                }
                None => self.endpoints.push(e),
            }
        }
        self.endpoints.sort_by_key(|e| e.addr);
        self.discovery.version = self.discovery.version.max(other.discovery.version);
        self.discovery.errors = self.discovery.errors.max(other.discovery.errors);
        if self.discovery.last_error.is_none() {
            self.discovery.last_error = other.discovery.last_error;
        }
    }
}

fn worse_breaker(a: BreakerState, b: BreakerState) -> BreakerState {
    let rank = |s| match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn health_rank(h: HealthState) -> u8 {
    match h {
        HealthState::Active => 0,
        HealthState::Probing => 1,
        HealthState::Ejected => 2,
    }
}

/// Requests a client could not route, for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnroutableCount {
    /// `missing_authority`, `unsupported_scheme`, `resolve` (unknown service, DNS failure) or
    /// `policy` (the service's policies cannot be applied).
    pub reason: &'static str,
    /// How many requests.
    pub count: u64,
}

/// A destination's discovery source.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiscoverySnapshot {
    /// Endpoint-set versions published (1 after the first answer).
    pub version: u64,
    /// Failures reported (each kept the last good endpoints).
    pub errors: u64,
    /// The failure since the last good update, if any.
    pub last_error: Option<String>,
}

pub use crate::discover::status::{ConfigError, ConfigSourceSnapshot, RemoteState};

/// Something a [`Telemetry`](super::Telemetry) can ask for a destination snapshot: implemented
/// by the protocol crates' clients for each destination they build.
pub trait DestinationSource: Send + Sync + 'static {
    /// The destination's state now.
    fn snapshot(&self) -> DestinationSnapshot;
}
