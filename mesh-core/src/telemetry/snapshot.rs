//! The debug snapshot: what the mesh knows, as serde data. The metrics collector encodes the
//! same snapshot, so `/metrics` and `/mesh/debug` never disagree.

use serde::Serialize;

use super::{
    request::{LatencyHistogram, StatusCount},
    server::CallerCount,
};
use crate::{
    ServiceName, balance::EndpointStats, breaker::BreakerState, limit::LimitCounts,
    retry::RetryCounts, tls::TlsStatus,
};

/// Everything a [`Telemetry`](super::Telemetry) tracks, at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Outbound destinations of every tracked client, by service name.
    pub destinations: Vec<DestinationSnapshot>,
    /// Configuration sources (endpoints files) of every tracked mesh.
    pub config: Vec<ConfigSourceSnapshot>,
    /// TLS material of every tracked store.
    pub tls: Vec<TlsStatus>,
    /// Inbound requests by caller identity and authorization decision.
    pub server: Vec<CallerCount>,
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

/// One configuration source of a mesh.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigSourceSnapshot {
    /// What kind of source (`endpoints-file`).
    pub kind: &'static str,
    /// Where it is read from.
    pub path: String,
    /// The live version: how many times it was loaded successfully (1 = the initial load).
    pub version: u64,
    /// Rejected loads (invalid content; the previous version stayed live).
    pub rejections: u64,
    /// The latest rejection if the source is still on an older version, with field and reason.
    pub last_error: Option<String>,
}

/// Something a [`Telemetry`](super::Telemetry) can ask for a destination snapshot: implemented
/// by the protocol crates' clients for each destination they build.
pub trait DestinationSource: Send + Sync + 'static {
    /// The destination's state now.
    fn snapshot(&self) -> DestinationSnapshot;
}
