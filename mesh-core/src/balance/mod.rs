//! Load balancing over a service's endpoints.
//!
//! A [`Balancer`] is a `tower::Service<http::Request<B>>` that sends each request to one endpoint
//! of one service, chosen by an [`LbPolicy`]:
//!
//! | policy | chooses | when |
//! |---|---|---|
//! | [`P2cPeakEwma`](LbPolicy::P2cPeakEwma) (default) | the less loaded of two random endpoints, load = latency estimate × (in-flight + 1) | almost always: routes around slow endpoints with no health signal |
//! | [`RoundRobin`](LbPolicy::RoundRobin) | each endpoint in turn | identical endpoints, predictable spread |
//! | [`Weighted`](LbPolicy::Weighted) | at random, in proportion to endpoint weight | endpoints of different size |
//! | [`Random`](LbPolicy::Random) | uniformly at random | Istio `RANDOM` |
//! | [`RingHash`](LbPolicy::RingHash), [`ConsistentHash`](LbPolicy::ConsistentHash) | by consistent hash of a header, cookie, query parameter or the source | affinity (caches, sessions) |
//!
//! The endpoint set follows discovery: a background task applies every new snapshot of the
//! [`Subscription`] as a new immutable table (swapped atomically), keeping the connection pools
//! and load of endpoints that stay. Requests already sent to a removed endpoint finish there.
//!
//! **Cloning is cheap and every clone shares one state** (table and per-endpoint load live in
//! atomics), so a balancer is used from many tasks without `tower::buffer::Buffer`; see
//! `ewma.rs` for why this is not tower's own `p2c::Balance` + `PeakEwma`.
//!
//! **Readiness.** `poll_ready` is always ready: the balancer never queues. When the service has
//! no endpoints the call fails at once with [`NoEndpoints`] naming the service (or, if
//! [`BalanceConfig::wait_for_endpoints`] is set, waits that long for one to appear); an endpoint's
//! own readiness is awaited inside the response future. Backpressure is the job of the limit
//! layer in front of the balancer.
//!
//! ```
//! use mesh_core::balance::{BalanceConfig, Balancer, NoEndpoints};
//! use mesh_core::discover::{EndpointSource, StaticSource};
//! use mesh_core::{Endpoint, ServiceName};
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let name: ServiceName = "reviews:9080".parse().unwrap();
//! let source = StaticSource::new(vec![Endpoint::new("10.0.0.1:9080".parse().unwrap())]).unwrap();
//! // Each endpoint gets its own service; here one that answers with the endpoint's address.
//! let mut balancer = Balancer::new(name.clone(), source.subscribe(&name), BalanceConfig::default(),
//!     |ep: &Endpoint| {
//!         let addr = ep.addr;
//!         tower::service_fn(move |_req: http::Request<()>| async move { Ok::<_, NoEndpoints>(addr) })
//!     });
//! let addr = balancer.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert_eq!(addr.to_string(), "10.0.0.1:9080");
//! # }
//! ```

mod config;
mod error;
mod ewma;
mod feed;
mod future;
mod policy;
mod ring;
mod table;
mod tried;
mod update;

use std::{
    fmt,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, oneshot};
use tower::util::Oneshot;
use tower_service::Service;

pub use self::{
    config::{BalanceConfig, DEFAULT_DISCOVERY_TIMEOUT, NewEndpoint},
    error::{EndpointStats, NoEndpoints, NoEndpointsReason},
    feed::{EndpointFeed, Selector},
    future::ResponseFuture,
    policy::{
        DEFAULT_EWMA_DECAY, DEFAULT_IN_FLIGHT_BIAS, HashOn, HeaderKey, InFlightBias,
        InvalidHeaderKey, LbPolicy, MAX_IN_FLIGHT_BIAS,
    },
    ring::DEFAULT_MIN_RING_SIZE,
    tried::TriedEndpoints,
};
use self::{
    ewma::nanos_since,
    future::{Call, InFlight},
    table::{HashKey, Picker, Slot, Table},
};
use crate::{
    ServiceName,
    classify::{Classify, ErrorsFail},
    deadline::AttemptTimeout,
    discover::Subscription,
    outlier::{HealthState, Outlier},
};

/// A load balancer over one service's endpoints. See the [module docs](self).
///
/// `C` classifies results for outlier ejection (the protocol crates supply one).
pub struct Balancer<S, C = ErrorsFail> {
    shared: Arc<Shared<S, C>>,
}

pub(crate) struct Shared<S, C> {
    service: ServiceName,
    picker: Picker,
    min_ring_size: usize,
    config: BalanceConfig,
    pub(crate) epoch: Instant,
    pub(crate) decay_ns: f64,
    table: ArcSwap<Table<S>>,
    /// Woken after every table swap, for requests waiting for endpoints.
    updated: Notify,
    outlier: Arc<Outlier>,
    classifier: C,
    /// Dropped with the last balancer clone; stops the update task (none for a balancer fed
    /// by an [`EndpointFeed`]).
    _stop: Option<oneshot::Sender<()>>,
}

impl<S, C> Clone for Balancer<S, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> Balancer<S, ErrorsFail>
where
    S: Clone + Send + Sync + 'static,
{
    /// A balancer over `service`'s endpoints as `subscription` publishes them; `new_endpoint`
    /// builds the service for each endpoint. Errors count as failures for outlier ejection.
    /// Must be called inside a tokio runtime (a task applies discovery changes); outside one,
    /// the balancer keeps the endpoints it started with and says so in an error event.
    pub fn new<N>(
        service: ServiceName,
        subscription: Subscription,
        config: BalanceConfig,
        new_endpoint: N,
    ) -> Self
    where
        N: NewEndpoint<S>,
    {
        Self::with_classifier(service, subscription, config, new_endpoint, ErrorsFail)
    }
}

impl<S, C> Balancer<S, C>
where
    S: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
{
    /// Like [`Balancer::new`], with the protocol's classifier deciding which results are
    /// failures for outlier ejection.
    pub fn with_classifier<N>(
        service: ServiceName,
        mut subscription: Subscription,
        config: BalanceConfig,
        new_endpoint: N,
        classifier: C,
    ) -> Self
    where
        N: NewEndpoint<S>,
    {
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = Arc::new(Shared::new(service, config, classifier, Some(stop_tx)));
        shared.apply(&subscription.snapshot_and_update(), &new_endpoint);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(follow_discovery(
                    Arc::downgrade(&shared),
                    subscription,
                    new_endpoint,
                    stop_rx,
                ));
            }
            Err(_) => tracing::error!(service = %shared.service,
                "balancer created outside a tokio runtime: endpoint changes will not be applied"),
        }
        Self { shared }
    }

    /// A balancer over the endpoints of `feed` that `selector` picks (a subset; empty: all),
    /// following the feed's changes without a task of its own.
    pub fn from_feed<N>(
        feed: &EndpointFeed,
        name: ServiceName,
        selector: Selector,
        config: BalanceConfig,
        new_endpoint: N,
        classifier: C,
    ) -> Self
    where
        N: NewEndpoint<S>,
    {
        let shared = Arc::new(Shared::new(name, config, classifier, None));
        feed.join(Arc::new(feed::BalancerMember {
            shared: Arc::downgrade(&shared),
            new_endpoint,
            selector,
        }));
        Self { shared }
    }
}

impl<S, C> Shared<S, C> {
    fn new(
        service: ServiceName,
        config: BalanceConfig,
        classifier: C,
        stop: Option<oneshot::Sender<()>>,
    ) -> Self {
        let (picker, decay, min_ring_size) = match &config.policy {
            LbPolicy::P2cPeakEwma {
                decay,
                in_flight_bias,
            } => (
                Picker::P2c {
                    decay_ns: decay.as_nanos().max(1) as f64,
                    // Out-of-range values are rejected when configuration is parsed; clamp
                    // what code builds by hand rather than misbehave.
                    bias: in_flight_bias.0.clamp(0.0, MAX_IN_FLIGHT_BIAS),
                },
                *decay,
                0,
            ),
            LbPolicy::RoundRobin => (Picker::RoundRobin, DEFAULT_EWMA_DECAY, 0),
            LbPolicy::Weighted => (Picker::Weighted, DEFAULT_EWMA_DECAY, 0),
            LbPolicy::Random => (Picker::Random, DEFAULT_EWMA_DECAY, 0),
            LbPolicy::RingHash {
                header,
                min_ring_size,
            } => (
                Picker::RingHash {
                    on: HashKey::Header(header.name().clone()),
                },
                DEFAULT_EWMA_DECAY,
                *min_ring_size,
            ),
            LbPolicy::ConsistentHash {
                hash_on,
                min_ring_size,
            } => (
                Picker::RingHash {
                    on: match hash_on {
                        HashOn::Header(h) => HashKey::Header(h.name().clone()),
                        HashOn::Cookie(c) => HashKey::Cookie(c.clone()),
                        HashOn::QueryParameter(q) => HashKey::Query(q.clone()),
                        HashOn::SourceIp => HashKey::Source(source_key()),
                    },
                },
                DEFAULT_EWMA_DECAY,
                *min_ring_size,
            ),
        };
        let epoch = Instant::now();
        let outlier = Arc::new(Outlier::new(
            service.clone(),
            config.outlier_detection.clone(),
            epoch,
        ));
        Shared {
            service,
            picker,
            min_ring_size,
            config,
            epoch,
            decay_ns: decay.as_nanos().max(1) as f64,
            table: ArcSwap::from_pointee(Table::unresolved()),
            updated: Notify::new(),
            outlier,
            classifier,
            _stop: stop,
        }
    }
}

impl<S, C> Balancer<S, C> {
    /// The service this balancer serves.
    pub fn service(&self) -> &ServiceName {
        &self.shared.service
    }

    /// Requests in flight to the current endpoints.
    pub fn in_flight(&self) -> usize {
        self.shared
            .table
            .load()
            .slots
            .iter()
            .map(|s| s.load.in_flight())
            .sum()
    }

    /// The current endpoints with their load.
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        let table = self.shared.table.load();
        let now = nanos_since(self.shared.epoch, Instant::now());
        table.slots.iter().map(|s| self.stats(s, now)).collect()
    }

    /// One endpoint as the balancer sees it now, if it is in the current set: a binary search
    /// (the table is sorted by address), cheap at any size, where [`endpoints`](Self::endpoints)
    /// copies them all.
    pub fn endpoint(&self, addr: std::net::SocketAddr) -> Option<EndpointStats> {
        let table = self.shared.table.load();
        let now = nanos_since(self.shared.epoch, Instant::now());
        let i = table
            .slots
            .binary_search_by_key(&addr, |s| s.endpoint.addr)
            .ok()?;
        Some(self.stats(&table.slots[i], now))
    }

    fn stats(&self, s: &table::Slot<S>, now: u64) -> EndpointStats {
        let health = s.health.state();
        let (ejections, readmissions) = s.health.transitions();
        EndpointStats {
            addr: s.endpoint.addr,
            weight: s.endpoint.weight,
            labels: s.endpoint.labels.clone(),
            in_flight: s.load.in_flight(),
            ewma_latency: s
                .load
                .estimate_ns(now, self.shared.decay_ns)
                .map(|ns| Duration::from_nanos(ns as u64)),
            health,
            probe_in: (health == HealthState::Ejected)
                .then(|| Duration::from_nanos(s.health.ejected_until_ns().saturating_sub(now))),
            window: self.shared.outlier.window_totals(&s.health),
            ejections,
            readmissions,
            responses: s.health.responses(),
        }
    }
}

impl<S, C> Shared<S, C> {
    fn no_endpoints(&self, table: &Table<S>, waited: Duration) -> NoEndpoints {
        let reason = match (&table.last_error, table.resolved) {
            (Some(e), _) => NoEndpointsReason::Discovery(e.clone()),
            (None, true) if table.unhealthy > 0 => NoEndpointsReason::Unhealthy(table.unhealthy),
            (None, true) => NoEndpointsReason::Empty,
            (None, false) => NoEndpointsReason::Unresolved,
        };
        NoEndpoints {
            service: self.service.clone(),
            waited,
            reason,
        }
    }

    fn wait_bound(&self, table: &Table<S>) -> Duration {
        if table.resolved {
            self.config.wait_for_endpoints
        } else {
            self.config.discovery_timeout
        }
    }
}

/// The consistent-hash key of `useSourceIp`: one random value per process (the process is the
/// source of every request it sends).
fn source_key() -> u64 {
    static KEY: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| fastrand::u64(..))
}

/// Applies discovery snapshots until the balancer or the source goes away.
async fn follow_discovery<S, C, N>(
    shared: Weak<Shared<S, C>>,
    mut subscription: Subscription,
    new_endpoint: N,
    mut stop: oneshot::Receiver<()>,
) where
    S: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    N: NewEndpoint<S>,
{
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            alive = subscription.changed() => {
                if !alive {
                    // The source is gone; its last snapshot stays in force.
                    return;
                }
                let Some(shared) = shared.upgrade() else { return };
                shared.apply(&subscription.snapshot_and_update(), &new_endpoint);
            }
        }
    }
}

fn dispatch<S, C, Req>(
    shared: &Shared<S, C>,
    slot: &Arc<Slot<S>>,
    req: Req,
    start: Instant,
    attempt_timeout: Option<AttemptTimeout>,
) -> ResponseFuture<S, Req, C>
where
    S: Service<Req> + Clone,
    C: Clone,
{
    if tracing::enabled!(tracing::Level::DEBUG) {
        // Fill in the request span's `endpoint` field, if the caller opened one.
        tracing::Span::current().record("endpoint", tracing::field::display(slot.endpoint.addr));
        tracing::debug!(service = %shared.service, endpoint = %slot.endpoint.addr, "endpoint selected");
    }
    let in_flight = InFlight::new(slot.clone(), shared, start, attempt_timeout);
    // Endpoint services are usually always ready (hyper-util's client is): check without
    // parking and call at once, so the future holds the call's future rather than the request.
    let mut svc = slot.service.clone();
    let call = match svc.poll_ready(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Ok(())) => Call::Called(svc.call(req)),
        Poll::Ready(Err(e)) => return ResponseFuture::failed(e),
        Poll::Pending => Call::Waiting(Oneshot::new(svc, req)),
    };
    ResponseFuture::called(call, in_flight, shared.classifier.clone())
}

impl<S, C, B> Service<http::Request<B>> for Balancer<S, C>
where
    S: Service<http::Request<B>> + Clone + Send + Sync + 'static,
    S::Error: From<NoEndpoints> + Send + 'static,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
    C: Classify<S::Response, S::Error> + Clone + Send + Sync + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, http::Request<B>, C>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.send(req)
    }
}

impl<S, C> Balancer<S, C> {
    /// Sends a request to an endpoint: what [`Service::call`] does, through a shared reference.
    pub fn send<B>(&self, req: http::Request<B>) -> ResponseFuture<S, http::Request<B>, C>
    where
        S: Service<http::Request<B>> + Clone + Send + Sync + 'static,
        S::Error: From<NoEndpoints> + Send + 'static,
        S::Response: Send + 'static,
        S::Future: Send + 'static,
        C: Classify<S::Response, S::Error> + Clone + Send + Sync + 'static,
        B: Send + 'static,
    {
        let start = Instant::now();
        let shared = &self.shared;
        let table = shared.table.load();
        let now = nanos_since(shared.epoch, start);
        let attempt_timeout = req.extensions().get::<AttemptTimeout>().copied();
        if let Some(slot) = shared.pick(&table, &req, now) {
            return dispatch(shared, slot, req, start, attempt_timeout);
        }
        if shared.wait_bound(&table).is_zero() {
            return ResponseFuture::failed(shared.no_endpoints(&table, Duration::ZERO).into());
        }
        let shared = shared.clone();
        ResponseFuture::waiting(Box::pin(async move {
            loop {
                let notified = shared.updated.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let table = shared.table.load_full();
                let now = Instant::now();
                if let Some(slot) = shared.pick(&table, &req, nanos_since(shared.epoch, now)) {
                    return dispatch(&shared, slot, req, now, attempt_timeout).await;
                }
                let deadline = start + shared.wait_bound(&table);
                if now >= deadline {
                    let err = shared.no_endpoints(&table, now - start);
                    return Err(err.into());
                }
                // Woken by a table swap or the deadline; either way, look again.
                let _ = tokio::time::timeout_at(deadline.into(), notified).await;
            }
        }))
    }
}

impl<S, C> Shared<S, C> {
    /// Picks an endpoint for `req` and records it for later attempts of the same request.
    fn pick<'t, B>(
        &self,
        table: &'t Table<S>,
        req: &http::Request<B>,
        now: u64,
    ) -> Option<&'t Arc<Slot<S>>> {
        let tried = req.extensions().get::<TriedEndpoints>();
        let slot = table.pick(
            &self.picker,
            req.headers(),
            req.uri(),
            now,
            &self.outlier,
            tried,
        )?;
        if let Some(t) = tried {
            t.record(slot.endpoint.addr);
        }
        Some(slot)
    }
}

impl<S, C> fmt::Debug for Balancer<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.service)
            .field("policy", &self.shared.config.policy)
            .field("table", &**self.shared.table.load())
            .finish()
    }
}
