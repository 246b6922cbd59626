//! Telemetry: OpenMetrics metrics, the debug snapshot, and the admin endpoints' data.
//!
//! A [`Telemetry`] is handed to the clients (`ClientSettings::telemetry` in mesh-hyper and
//! mesh-tonic), to server layers (authorization records caller × decision; the metrics layer
//! records every inbound request by caller × status, with its latency), and told about
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
//! | `client_unroutable_total` | counter | reason |
//! | `client_response_latency_seconds` | histogram | service |
//! | `client_in_flight` | gauge | service |
//! | `client_retries_total`, `client_hedges_total`, `client_retry_budget_exhausted_total` | counter | service |
//! | `client_retry_budget_available` | gauge | service |
//! | `client_shed_total`, `client_rate_limited_total` | counter | service |
//! | `client_breaker_state` | gauge | service, state |
//! | `discovery_updates_total`, `discovery_errors_total` | counter | service |
//! | `endpoint_in_flight`, `endpoint_ewma_latency_seconds`, `endpoint_state` | gauge | service, endpoint (, state) |
//! | `endpoint_responses_total` | counter | service, endpoint, outcome |
//! | `endpoint_ejections_total`, `endpoint_readmissions_total` | counter | service, endpoint |
//! | `config_reloads_total` | counter | source, path, result |
//! | `tls_reloads_total` | counter | identity, result |
//! | `tls_handshakes_total` | counter | identity, side, result |
//! | `server_requests_total` | counter | caller, decision |
//! | `server_responses_total` | counter | caller, status, outcome |
//! | `server_response_latency_seconds` | histogram | caller |
//! | `server_in_flight` | gauge | caller |
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
mod unroutable;

use std::sync::{Arc, Mutex, Weak};

pub use prometheus_client::registry::Registry;

use self::unroutable::UnroutableMetrics;
pub use self::{
    request::{
        ErrorKind, GRPC_CODE_NAMES, LATENCY_BUCKETS, LatencyHistogram, PendingStatus,
        RequestMetrics, StatusCount, StatusKey,
    },
    server::{CallerCount, CallerMetrics, Decision, InboundSnapshot, MAX_CALLERS, ServerMetrics},
    snapshot::{
        ConfigError, ConfigSourceSnapshot, DestinationSnapshot, DestinationSource,
        DiscoverySnapshot, RemoteState, Snapshot, UnroutableCount,
    },
    unroutable::Unroutable,
};
use crate::{
    Mesh,
    tls::{TlsStatus, TlsStore},
};

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
    unroutable: UnroutableMetrics,
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

    /// Tracks a mesh's configuration sources (endpoints files: version, rejections, recent
    /// errors). Clients with telemetry track their mesh themselves; tracking twice is a no-op.
    /// The telemetry keeps the mesh alive.
    pub fn track_mesh(&self, mesh: &Mesh) {
        let mut v = lock(&self.inner.meshes);
        if !v.iter().any(|m| m.same(mesh)) {
            v.push(mesh.clone());
        }
    }

    /// Tracks TLS material: reloads, rejections and handshakes by side and result. Clients
    /// with telemetry track their own store; a server's store is tracked with this. Tracking
    /// twice is a no-op; stores with the same identity are reported as one (counts added).
    pub fn track_tls(&self, store: &TlsStore) {
        let mut v = lock(&self.inner.tls);
        if !v.iter().any(|s| s.same(store)) {
            v.push(store.clone());
        }
    }

    /// The meshes tracked (for the admin service's explanations).
    pub fn meshes(&self) -> Vec<Mesh> {
        lock(&self.inner.meshes).clone()
    }

    /// Counts a request a client could not route (called by the protocol crates).
    pub fn unroutable(&self, reason: Unroutable) {
        self.inner.unroutable.record(reason);
    }

    /// Inbound request counters (recorded by the servers' authorization and metrics layers).
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
        let mut destinations: Vec<DestinationSnapshot> = Vec::new();
        for d in sources.iter().map(|s| s.snapshot()) {
            match destinations.iter_mut().find(|m| m.service == d.service) {
                Some(m) => m.absorb(d),
                None => destinations.push(d),
            }
        }
        destinations.sort_by(|a, b| a.service.cmp(&b.service));
        let mut config: Vec<ConfigSourceSnapshot> = Vec::new();
        for c in lock(&self.meshes).iter().flat_map(Mesh::config_sources) {
            // Two meshes over one file report it once.
            if !config.iter().any(|m| m.kind == c.kind && m.path == c.path) {
                config.push(c);
            }
        }
        Snapshot {
            destinations,
            unroutable: self.unroutable.counts(),
            config,
            tls: merge_tls(lock(&self.tls).iter().map(TlsStore::status)),
            server: self.server.counts(),
            inbound: self.server.inbound(),
        }
    }
}

/// One entry per identity: stores sharing an identity add their counts up.
fn merge_tls(statuses: impl Iterator<Item = TlsStatus>) -> Vec<TlsStatus> {
    let mut out: Vec<TlsStatus> = Vec::new();
    for s in statuses {
        let Some(m) = out.iter_mut().find(|m| m.identity == s.identity) else {
            out.push(s);
            continue;
        };
        m.reloads += s.reloads;
        m.rejected_reloads += s.rejected_reloads;
        m.not_after = m.not_after.min(s.not_after);
        if m.last_error.is_none() {
            m.last_error = s.last_error;
        }
        for (mine, theirs) in [
            (&mut m.handshakes.client, s.handshakes.client),
            (&mut m.handshakes.server, s.handshakes.server),
        ] {
            mine.completed += theirs.completed;
            for (reason, n) in theirs.failed {
                match mine.failed.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, c)) => *c += n,
                    None => mine.failed.push((reason, n)),
                }
            }
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update is a push or retain: a panic elsewhere cannot leave the Vec inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
