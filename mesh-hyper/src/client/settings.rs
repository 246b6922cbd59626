//! The client's connection settings, and what it reports of its backends.

use std::time::Duration;

use mesh_core::{ServiceName, balance::EndpointStats, telemetry::Telemetry, tls::TlsStore};

/// One backend of a destination's routes: a service, or one of its subsets.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BackendStats {
    /// The service.
    pub service: ServiceName,
    /// The subset (`None`: every endpoint of the service).
    pub subset: Option<String>,
    /// Its endpoints as its balancer sees them.
    pub endpoints: Vec<EndpointStats>,
}

/// Connection settings of a [`MeshClient`](super::MeshClient), applied to every endpoint's pool.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Time allowed for a TCP connect, and again for the TLS handshake of mTLS endpoints.
    /// Default 1 s: linkerd2-proxy's outbound connect timeout.
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this. Default 90 s: hyper-util's default.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per endpoint. Default unlimited: hyper-util's default.
    pub pool_max_idle_per_endpoint: usize,
    /// TCP keepalive probes after 60 s of idleness (the default), so dead peers behind NAT
    /// are found (Linux would otherwise wait two hours).
    pub tcp_keepalive: Option<Duration>,
    /// This workload's TLS identity, for mTLS to destinations whose policy asks for it
    /// (`ServiceConfig::tls`; by default, endpoints with a known identity).
    pub tls: Option<TlsStore>,
    /// HTTP/2 connections per endpoint, each multiplexing many requests. Default 1 (what
    /// gRPC clients and Linkerd do); more spreads one endpoint's load over several TCP streams
    /// and server threads when a single connection's flow becomes the bottleneck.
    pub http2_connections_per_endpoint: usize,
    /// Where request metrics and the destinations' state are reported (see
    /// [`mesh_core::telemetry`]). Default none: no metrics are recorded.
    pub telemetry: Option<Telemetry>,
    /// Whether requests carry W3C trace context: a request without `traceparent` gets one
    /// whose parent is the request the current task is handling (set by the server layers), or
    /// a new trace. Default on.
    pub trace_context: bool,
    /// Destinations the mesh resolved on demand (names it was not told about, found with DNS;
    /// IP literals) to which no request was sent for at least this long are dropped, with
    /// their connection pools and DNS refresh, within 1.5 times this; a later request builds
    /// them again (their `mesh_client_*` counters then start from zero). Configured services
    /// are kept, and so are destinations with requests waiting for their response head and
    /// those held by a [`Target`](super::Target) (or a gRPC channel): the idle time starts when they are not.
    /// A response body still streaming when its destination is dropped completes normally.
    /// Default 60 s (the order of Linkerd's max idle age for outbound destinations); `None`:
    /// never.
    pub destination_idle_timeout: Option<Duration>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_endpoint: usize::MAX,
            tcp_keepalive: Some(Duration::from_secs(60)),
            tls: None,
            http2_connections_per_endpoint: 1,
            telemetry: None,
            trace_context: true,
            destination_idle_timeout: Some(Duration::from_secs(60)),
        }
    }
}
