//! Telemetry: OpenMetrics metrics, the debug snapshot, and the admin endpoints' data.
//!
//! A [`Telemetry`] is handed to the clients (`ClientSettings::telemetry` in mesh-hyper and
//! mesh-tonic), to server layers (authorization records caller × decision), and told about
//! meshes and TLS stores; it registers one collector in the application's
//! [`prometheus_client`] registry. Everything is read at scrape time from counters the layers
//! keep anyway (retries, budget, limits, breaker, balancer endpoints, outlier ejections,
//! discovery, TLS); the request path adds only a status counter and a latency histogram per
//! destination (see [`RequestMetrics`]).
//!
//! **Why prometheus-client with a registry handed in**, rather than the `metrics` facade: it
//! writes OpenMetrics text itself (no exporter to install), it keeps no global state (two
//! meshes in one process, or a test, each get their own registry), and the application's own
//! metrics end up in the same exposition. The `mesh_` prefix is added by a sub-registry.
//!
//! **Label cardinality is bounded by construction**: `service` (destinations the client was
//! asked to call), `endpoint` (current endpoints), `status` (30 values: HTTP classes, gRPC
//! codes, mesh error kinds), `outcome` (3), `caller` (at most [`MAX_CALLERS`] identities, then
//! `other`), `decision` (2), TLS `result` (9). No paths, no raw status codes, no request ids.
//!
//! | metric (`mesh_` prefix) | type | labels |
//! |---|---|---|
//! | `client_requests_total` | counter | service, status, outcome |
//! | `client_response_latency_seconds` | histogram | service |
//! | `client_in_flight` | gauge | service |
//! | `client_retries_total`, `client_hedges_total`, `client_retry_budget_exhausted_total` | counter | service |
//! | `client_retry_budget_available` | gauge | service |
//! | `client_shed_total`, `client_rate_limited_total` | counter | service |
//! | `client_breaker_state` | gauge | service, state |
//! | `discovery_updates_total`, `discovery_errors_total` | counter | service |
//! | `endpoint_in_flight`, `endpoint_ewma_latency_seconds`, `endpoint_state` | gauge | service, endpoint (, state) |
//! | `endpoint_ejections_total`, `endpoint_readmissions_total` | counter | service, endpoint |
//! | `config_reloads_total` | counter | source, path, result |
//! | `tls_reloads_total` | counter | identity, result |
//! | `tls_handshakes_total` | counter | identity, side, result |
//! | `server_requests_total` | counter | caller, decision |
//!
//! ```
//! use mesh_core::telemetry::{Registry, Telemetry};
//!
//! let mut registry = Registry::default();
//! let telemetry = Telemetry::new(&mut registry);
//! // ClientSettings { telemetry: Some(telemetry.clone()), .. } in mesh-hyper / mesh-tonic;
//! // serve `registry` and `telemetry.snapshot()` with mesh-hyper's admin service.
//! let snapshot = telemetry.snapshot();
//! assert!(snapshot.destinations.is_empty());
//! ```

mod encode;
mod request;
mod server;
mod snapshot;

use std::sync::{Arc, Mutex, Weak};

pub use prometheus_client::registry::Registry;

pub use self::{
    request::{
        ErrorKind, GRPC_CODE_NAMES, LATENCY_BUCKETS, LatencyHistogram, PendingStatus,
        RequestMetrics, StatusCount, StatusKey,
    },
    server::{CallerCount, Decision, MAX_CALLERS, ServerMetrics},
    snapshot::{
        ConfigSourceSnapshot, DestinationSnapshot, DestinationSource, DiscoverySnapshot, Snapshot,
    },
};
use crate::{Mesh, tls::TlsStore};

/// The telemetry of one application: what it tracks and the collector that encodes it.
/// Cheap to clone; clones share everything. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Default)]
pub(crate) struct Inner {
    destinations: Mutex<Vec<Weak<dyn DestinationSource>>>,
    meshes: Mutex<Vec<Mesh>>,
    tls: Mutex<Vec<TlsStore>>,
    server: ServerMetrics,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Telemetry whose metrics are encoded by `registry` (under the `mesh_` prefix).
    pub fn new(registry: &mut Registry) -> Self {
        let t = Self::without_registry();
        registry
            .sub_registry_with_prefix("mesh")
            .register_collector(Box::new(encode::SnapshotCollector(t.inner.clone())));
        t
    }

    /// Telemetry for the debug snapshot only (no metrics registry).
    pub fn without_registry() -> Self {
        Self {
            inner: Arc::new(Inner::default()),
        }
    }

    /// Tracks a client destination until it is dropped (called by the protocol crates).
    pub fn track_destination(&self, source: Weak<dyn DestinationSource>) {
        let mut v = lock(&self.inner.destinations);
        v.retain(|w| w.strong_count() > 0);
        v.push(source);
    }

    /// Tracks a mesh's configuration sources (endpoints files: version, rejections, errors).
    pub fn track_mesh(&self, mesh: &Mesh) {
        lock(&self.inner.meshes).push(mesh.clone());
    }

    /// Tracks TLS material: reloads, rejections and handshakes by side and result.
    pub fn track_tls(&self, store: &TlsStore) {
        lock(&self.inner.tls).push(store.clone());
    }

    /// Inbound request counters (recorded by the servers' authorization layers).
    pub fn server(&self) -> &ServerMetrics {
        &self.inner.server
    }

    /// Everything tracked, now.
    pub fn snapshot(&self) -> Snapshot {
        self.inner.snapshot()
    }
}

impl Inner {
    fn snapshot(&self) -> Snapshot {
        let sources: Vec<_> = lock(&self.destinations)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut destinations: Vec<_> = sources.iter().map(|s| s.snapshot()).collect();
        destinations.sort_by(|a, b| a.service.cmp(&b.service));
        Snapshot {
            destinations,
            config: lock(&self.meshes)
                .iter()
                .flat_map(Mesh::config_sources)
                .collect(),
            tls: lock(&self.tls).iter().map(TlsStore::status).collect(),
            server: self.server.counts(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a push or retain: a panic elsewhere cannot leave the Vec inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
