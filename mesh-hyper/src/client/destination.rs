//! One logical destination (the service a request's authority names): its live routing, the
//! retry budget its routes share, its metrics, and the idle bookkeeping.

use std::sync::{
    Arc, Mutex, Weak,
    atomic::{AtomicBool, AtomicU8, Ordering::Relaxed},
};

use arc_swap::ArcSwap;
use mesh_core::{
    ServiceConfig, ServiceName,
    balance::EndpointStats,
    config::ConfigStore,
    limit::LimitCounts,
    retry::{BudgetPolicy, RetryShare},
    telemetry::{DestinationSnapshot, DestinationSource, DiscoverySnapshot, RequestMetrics},
};

use super::{Dialect, Inner, RequestBody, mirror::Mirrors, router::Routing};
use crate::Error;

/// The destination of one service name. See the [module docs](self).
pub(super) struct Dest<B, D> {
    pub(super) name: ServiceName,
    /// Its own policy (code, file or defaults): the base the documents override.
    pub(super) base: ServiceConfig,
    routing: ArcSwap<Routing<B, D>>,
    /// Serializes rebuilds after a configuration change.
    rebuilding: Mutex<()>,
    config: Option<ConfigStore>,
    client: Weak<Inner<B, D>>,
    /// The retry budget every route to this destination shares, and the policy it was made
    /// with (a new one replaces it only when the policy changes).
    pub(super) retry_share: ArcSwap<(BudgetPolicy, Arc<RetryShare>)>,
    pub(super) mirrors: Arc<Mirrors>,
    /// Request counters and latency, when the client has telemetry.
    pub(super) metrics: Option<Arc<RequestMetrics>>,
    /// Whether requests get a `traceparent` (see `ClientSettings::trace_context`).
    pub(super) trace_context: bool,
    pub(super) dialect: D,
    /// Resolved on demand (not configured): dropped when idle.
    pub(super) on_demand: bool,
    /// Set by every request; cleared by each idle sweep.
    used: AtomicBool,
    /// Idle sweeps in a row that found it unused.
    idle_sweeps: AtomicU8,
}

impl<B: RequestBody, D: Dialect> Dest<B, D> {
    /// A destination with its first routing (built by `client`).
    pub(super) fn new(
        client: &Arc<Inner<B, D>>,
        name: ServiceName,
        base: ServiceConfig,
        on_demand: bool,
    ) -> Result<Arc<Self>, Error> {
        let config = client.mesh.config().cloned();
        let budget = base.destination.retry_budget.clone();
        let share = RetryShare::new(&budget).map_err(|error| Error::Policy {
            service: name.clone(),
            error,
        })?;
        let mirrors = Arc::new(Mirrors::default());
        let generation = config.as_ref().map_or(0, ConfigStore::generation);
        let dest = Arc::new_cyclic(|_| Self {
            routing: ArcSwap::from_pointee(Routing::empty(name.clone(), mirrors.clone())),
            name,
            base,
            rebuilding: Mutex::new(()),
            config,
            client: Arc::downgrade(client),
            retry_share: ArcSwap::from_pointee((budget, share)),
            mirrors,
            metrics: client
                .settings
                .telemetry
                .is_some()
                .then(|| Arc::new(RequestMetrics::default())),
            trace_context: client.settings.trace_context,
            dialect: client.dialect.clone(),
            on_demand,
            used: AtomicBool::new(true),
            idle_sweeps: AtomicU8::new(0),
        });
        let routing = client.routing(&dest, generation)?;
        dest.routing.store(Arc::new(routing));
        Ok(dest)
    }

    /// The routing in force, rebuilt first when the configuration changed since it was built.
    pub(super) fn routing(&self) -> Arc<Routing<B, D>> {
        let current = self.routing.load_full();
        let Some(config) = &self.config else {
            return current;
        };
        let generation = config.generation();
        if current.generation == generation {
            return current;
        }
        let _guard = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.routing.load_full();
        if current.generation == generation {
            return current; // another request rebuilt it meanwhile
        }
        let Some(client) = self.client.upgrade() else {
            return current;
        };
        let rebuilt = match client.routing(self, generation) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                // The documents validated, but this destination cannot apply them (say, mTLS
                // without an identity): keep the routes in force, and do not try again until the
                // next change.
                tracing::error!(service = %self.name, error = %e, "routes not updated: keeping the previous ones");
                Arc::new(current.with_generation(generation))
            }
        };
        tracing::debug!(service = %self.name, generation, routes = rebuilt.routes.len(), "routes rebuilt");
        self.routing.store(rebuilt.clone());
        rebuilt
    }

    /// One endpoint, from the first backend that holds it.
    pub(super) fn endpoint(&self, addr: std::net::SocketAddr) -> Option<EndpointStats> {
        let routing = self.routing.load();
        routing.backends().find_map(|b| b.balancer.endpoint(addr))
    }

    /// The endpoints of every backend the routes use (each address once).
    pub(super) fn endpoints(&self) -> Vec<EndpointStats> {
        let routing = self.routing.load();
        let mut out: Vec<EndpointStats> = Vec::new();
        // Subsets share addresses with the service's own backend: list each address once
        // (a set, not a scan: a service may have 10,000 endpoints).
        let mut seen = std::collections::HashSet::new();
        for b in routing.backends() {
            for e in b.balancer.endpoints() {
                if seen.insert(e.addr) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Requests in flight to the backends (for the idle sweep).
    pub(super) fn in_flight(&self) -> usize {
        self.routing
            .load()
            .backends()
            .map(|b| b.balancer.in_flight())
            .sum()
    }
}

impl<B, D> Dest<B, D> {
    /// Marks the destination used (a load, and a store only when an idle sweep cleared it).
    pub(super) fn touch(&self) {
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }

    /// For an idle sweep: clears the used mark and says whether this sweep and the one before
    /// both found it unused.
    pub(super) fn idle_for_two_sweeps(&self) -> bool {
        if self.used.swap(false, Relaxed) {
            self.idle_sweeps.store(0, Relaxed);
            return false;
        }
        let idle = self.idle_sweeps.load(Relaxed).saturating_add(1);
        self.idle_sweeps.store(idle, Relaxed);
        idle >= 2
    }
}

impl<B: RequestBody, D: Dialect> DestinationSource for Dest<B, D> {
    fn snapshot(&self) -> DestinationSnapshot {
        let endpoints = self.endpoints();
        let routing = self.routing.load();
        let mut limits = LimitCounts::default();
        let mut breaker = None;
        let mut discovery = None;
        for b in routing.backends() {
            let c = b.limit.counts();
            limits.shed += c.shed;
            limits.rate_limited += c.rate_limited;
            limits.queued += c.queued;
            if breaker.is_none() {
                breaker = b.breaker.as_ref().map(|l| l.state());
            }
            if discovery.is_none() {
                discovery = Some(b.feed.discovery.snapshot());
            }
        }
        let discovery = discovery.unwrap_or_default();
        let (requests, latency) = match &self.metrics {
            Some(m) => (m.statuses(), m.latency()),
            None => (Vec::new(), RequestMetrics::default().latency()),
        };
        let share = self.retry_share.load();
        DestinationSnapshot {
            service: self.name.clone(),
            requests,
            latency,
            in_flight: endpoints.iter().map(|e| e.in_flight).sum(),
            retries: share.1.stats(),
            retry_budget: share.1.budget_available(),
            limits,
            breaker,
            endpoints,
            discovery: DiscoverySnapshot {
                version: discovery.version,
                errors: discovery.errors,
                last_error: discovery.last_error.map(|e| e.to_string()),
            },
        }
    }
}
