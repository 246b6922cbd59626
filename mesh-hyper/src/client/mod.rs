//! The meshed HTTP client.
//!
//! [`MeshClient`] is a `tower::Service<http::Request<B>>` that takes requests addressed to
//! **logical services** (`http://reviews.default:9080/reviews/1`) and sends each to a live
//! endpoint of that service. Per destination service it holds a stack built in
//! one place (`stack`), top to bottom as in `shared/DESIGN.md`:
//!
//! ```text
//! authority ─► Mesh::resolve (configured | endpoints file | IP literal | DNS)
//!   Timeout   overall deadline, stored in the request for the layers below    mesh_core::timeout
//!   Retry     budget, backoff, per-try timeout, hedging, body replay           mesh_core::retry
//!   Breaker   optional service-level circuit breaker                          mesh_core::breaker
//!   Limit     max concurrent / max pending / rate → fast Overloaded errors    mesh_core::limit
//!   Balancer  P2C Peak-EWMA | RR | weighted | ring hash; outlier ejection      mesh_core::balance
//!   HttpEndpoint  hyper-util pooled client per endpoint; HTTP/1.1 or h2c
//! ```
//!
//! Why this order: the timeout is outermost so that it bounds everything, retries included,
//! and its deadline is visible to all; retries sit above the limits so that every attempt is
//! admitted (and counted) by them, and above the breaker so that a refused call is not retried;
//! the limits sit above the balancer so that a request that is shed never touches an endpoint's
//! load; ejection lives in the balancer because it is a per-endpoint decision, and the balancer
//! avoids the endpoints earlier attempts of the same request used.
//!
//! The request's URI and `Host` stay logical: hyper-util writes `Host: reviews.default:9080`
//! (or `:authority` over HTTP/2) and only the connector knows the endpoint's address. A request
//! in origin form (`/path` plus a `Host` header) is routed by its `Host`.
//!
//! Adopting it is one line: where an application built a hyper-util client, it builds a
//! `MeshClient` from its [`Mesh`] and keeps calling `request`:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty};
//! use mesh_core::Mesh;
//! use mesh_hyper::MeshClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::builder().endpoints_file("endpoints.yaml", Default::default()).build()?;
//! // before: let client = Client::builder(TokioExecutor::new()).build_http();
//! let client = MeshClient::new(mesh);
//! let req = http::Request::get("http://reviews.default:9080/reviews/1").body(Empty::<Bytes>::new())?;
//! let body = client.request(req).await?.into_body().collect().await?.to_bytes();
//! # Ok(()) }
//! ```

mod dialect;
mod endpoint;
mod tls;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, Uri, uri::Scheme};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_core::{
    Balancer, Destination, Mesh, PolicyError, Protocol, ServiceName,
    balance::EndpointStats,
    breaker::{Breaker, BreakerLayer, BreakerState},
    discover::health::{CheckKind, health_checked},
    limit::{Limit, LimitCounts, LimitLayer},
    retry::{ReplayBody, Retry, RetryCounts, RetryLayer},
    shared_service::SharedService,
    timeout::{self, Timeout, TimeoutLayer},
    tls::{ClientTlsMode, ClientTlsPolicy, TlsStore},
};
use pin_project_lite::pin_project;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tower::Layer;
use tower_service::Service;

use self::endpoint::TlsTarget;
pub use self::{
    dialect::{Dialect, EndpointTarget},
    endpoint::{EndpointFuture, HttpEndpoint},
    tls::EndpointStream,
};
use crate::{Error, HttpClassifier};

/// Request bodies the client can send: what hyper-util's client accepts. Implemented for every
/// such type (`Full<Bytes>`, `Empty<Bytes>`, `BoxBody`, tonic's body, ...).
pub trait RequestBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<T> RequestBody for T where
    T: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// Connection settings of a [`MeshClient`], applied to every endpoint's pool.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// Time allowed for a TCP connect. Default 1 s: linkerd2-proxy's outbound connect timeout.
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
        }
    }
}

/// The meshed HTTP client. Cheap to clone; clones share destinations, pools and load state.
/// See the [module docs](self). `D` is the protocol spoken over HTTP: plain HTTP by default,
/// gRPC in mesh-tonic.
pub struct MeshClient<B = Full<Bytes>, D = HttpClassifier> {
    inner: Arc<Inner<B, D>>,
}

struct Inner<B, D> {
    mesh: Mesh,
    settings: ClientSettings,
    dialect: D,
    /// Destinations by the authority string requests use (one service may have several
    /// spellings; they share one `Dest`). Read on every request without locking.
    by_authority: ArcSwap<ByAuthority<B, D>>,
    /// Destinations by normalized name; also serializes creation.
    by_name: Mutex<HashMap<ServiceName, Arc<Dest<B, D>>>>,
}

/// Destinations keyed by the authority spelling requests use.
type ByAuthority<B, D> = HashMap<Box<str>, Arc<Dest<B, D>>>;

type Balanced<B, D> = Balancer<HttpEndpoint<ReplayBody<B>, D>, D>;

/// The whole per-destination stack (see the module docs for the order).
type Stack<B, D> = Timeout<Retry<Breaker<Limit<Balanced<B, D>>, D>, D>>;

/// The stack of one destination service, and handles on its parts for statistics.
struct Dest<B, D> {
    name: ServiceName,
    stack: Stack<B, D>,
    balancer: Balanced<B, D>,
    retry: RetryLayer<D>,
    limit: Limit<Balanced<B, D>>,
    breaker: Option<BreakerLayer<D>>,
}

impl<B: RequestBody, D: Dialect> Dest<B, D> {
    fn stats(&self) -> DestinationStats {
        DestinationStats {
            service: self.name.clone(),
            retries: self.retry.stats(),
            retry_budget: self.retry.budget_available(),
            limits: self.limit.counts(),
            breaker: self.breaker.as_ref().map(BreakerLayer::state),
            endpoints: self.balancer.endpoints(),
        }
    }
}

/// What a client knows about one destination: counters and endpoint states.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationStats {
    /// The service.
    pub service: ServiceName,
    /// Requests, retries, hedges, budget exhaustion.
    pub retries: RetryCounts,
    /// Retries the budget allows right now.
    pub retry_budget: f64,
    /// Shed and rate-limited requests.
    pub limits: LimitCounts,
    /// The circuit breaker, if one is configured.
    pub breaker: Option<BreakerState>,
    /// Endpoints with load and health.
    pub endpoints: Vec<EndpointStats>,
}

impl<B, D> Clone for MeshClient<B, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> MeshClient<B, HttpClassifier>
where
    B: RequestBody,
{
    /// A client over `mesh` with default connection settings.
    pub fn new(mesh: Mesh) -> Self {
        Self::with_settings(mesh, ClientSettings::default())
    }

    /// A client over `mesh` with the given connection settings.
    pub fn with_settings(mesh: Mesh, settings: ClientSettings) -> Self {
        Self::with_dialect(mesh, settings, HttpClassifier)
    }
}

impl<B, D> MeshClient<B, D>
where
    B: RequestBody,
    D: Dialect,
{
    /// A client over `mesh` speaking `dialect` over HTTP (mesh-tonic's gRPC channel is one).
    pub fn with_dialect(mesh: Mesh, settings: ClientSettings, dialect: D) -> Self {
        Self {
            inner: Arc::new(Inner {
                mesh,
                settings,
                dialect,
                by_authority: ArcSwap::from_pointee(HashMap::new()),
                by_name: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A handle on one destination service: requests sent through it skip routing by
    /// authority, and may be in origin form (`/path`): the target's authority is filled in.
    /// Builds the destination's stack now if the client has not sent to it before.
    pub fn target(&self, authority: &str) -> Result<Target<B, D>, Error> {
        let uri_authority: http::uri::Authority =
            authority.parse().map_err(|_| Error::MissingAuthority)?;
        let dest = match self.inner.by_authority.load().get(authority) {
            Some(d) => d.clone(),
            None => self.destination(authority)?,
        };
        Ok(Target {
            dest,
            authority: uri_authority,
        })
    }

    /// Sends a request (the same call as hyper-util's `Client::request`).
    pub fn request(&self, mut req: Request<B>) -> ResponseFuture<B, D> {
        if let Err(e) = prepare(&mut req) {
            tracing::debug!(error = %e, "request not routable");
            return ResponseFuture::failed(e);
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        // Fast path: a known authority, routed under the map's guard (no reference counting).
        if let Some(dest) = self.inner.by_authority.load().get(authority) {
            return Self::route(dest, req);
        }
        match self.destination(authority) {
            Ok(dest) => Self::route(&dest, req),
            Err(e) => {
                tracing::debug!(error = %e, "request not routable");
                ResponseFuture::failed(e)
            }
        }
    }

    fn route(dest: &Dest<B, D>, req: Request<B>) -> ResponseFuture<B, D> {
        let span = tracing::debug_span!("mesh", service = %dest.name,
            endpoint = tracing::field::Empty, attempt = 1u32);
        if span.is_disabled() {
            return ResponseFuture::routed(dest.stack.call_shared(req), None);
        }
        let fut = {
            let _enter = span.enter();
            dest.stack.call_shared(req)
        };
        ResponseFuture::routed(fut, Some(span))
    }

    /// The endpoints of a service as its balancer sees them (load, in-flight, health), if the
    /// client has sent to it.
    pub fn endpoints(&self, service: &ServiceName) -> Option<Vec<EndpointStats>> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        by_name.get(service).map(|d| d.balancer.endpoints())
    }

    /// Counters and endpoint states of a service, if the client has sent to it.
    pub fn stats(&self, service: &ServiceName) -> Option<DestinationStats> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        by_name.get(service).map(|d| d.stats())
    }

    /// Finds or builds the destination of an authority not seen before.
    fn destination(&self, authority: &str) -> Result<Arc<Dest<B, D>>, Error> {
        let name =
            ServiceName::from_authority(authority, 80).map_err(|e| Error::Resolve(e.into()))?;
        let mut by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let dest = match by_name.get(&name) {
            Some(d) => d.clone(),
            None => {
                let dest = Arc::new(self.stack(self.inner.mesh.resolve_name(name.clone())?)?);
                by_name.insert(name, dest.clone());
                dest
            }
        };
        let mut map = HashMap::clone(&self.inner.by_authority.load());
        map.insert(authority.into(), dest.clone());
        self.inner.by_authority.store(Arc::new(map));
        Ok(dest)
    }

    /// Builds the stack of one destination, bottom to top (see the module docs).
    fn stack(&self, dest: Destination) -> Result<Dest<B, D>, Error> {
        let Destination {
            name,
            config,
            mut subscription,
        } = dest;
        let dialect = self.inner.dialect.clone();
        tracing::debug!(service = %name, policy = ?config.balance.policy,
            protocol = ?config.protocol, "new destination");
        let policy_error = |error| Error::Policy {
            service: name.clone(),
            error,
        };
        let settings = self.inner.settings.clone();
        let protocol = dialect.protocol(config.protocol);
        if config.tls.mode == ClientTlsMode::Mutual && settings.tls.is_none() {
            return Err(policy_error(PolicyError::new(
                "tls.mode",
                "MUTUAL needs a TLS identity: set ClientSettings::tls",
            )));
        }
        let targets = Arc::new(Targets {
            service: name.clone(),
            protocol,
            tls_policy: config.tls.clone(),
            settings,
        });
        if let Some(policy) = &config.health_check {
            let kind = policy.kind();
            if !dialect.supports_health_check(&kind) {
                let field = match kind {
                    CheckKind::Grpc(_) => "healthCheck.grpc",
                    CheckKind::Http(_) => "healthCheck.http",
                };
                return Err(policy_error(PolicyError::new(
                    field,
                    "this kind of health check needs another client (gRPC checks: mesh-tonic's channel)",
                )));
            }
            let (targets, dialect) = (targets.clone(), dialect.clone());
            subscription = health_checked(
                name.clone(),
                subscription,
                policy.clone(),
                move |ep: &mesh_core::Endpoint| dialect.health_probe(&kind, &targets.target(ep)),
            );
        }
        let endpoint_dialect = dialect.clone();
        let balancer = Balancer::with_classifier(
            name.clone(),
            subscription,
            config.balance,
            move |ep: &mesh_core::Endpoint| {
                HttpEndpoint::new(&targets.target(ep), endpoint_dialect.clone())
            },
            dialect.clone(),
        );
        let limit = LimitLayer::new(name.clone(), &config.limits)
            .map_err(policy_error)?
            .layer(balancer.clone());
        let breaker_layer = match &config.breaker {
            Some(p) => {
                Some(BreakerLayer::new(name.clone(), p, dialect.clone()).map_err(policy_error)?)
            }
            None => None,
        };
        let breaker = match &breaker_layer {
            Some(l) => l.layer(limit.clone()),
            None => Breaker::disabled(limit.clone()),
        };
        let retry = RetryLayer::new(name.clone(), config.retries, dialect).map_err(policy_error)?;
        let stack = TimeoutLayer::new(name.clone(), config.timeout).layer(retry.layer(breaker));
        Ok(Dest {
            name,
            stack,
            balancer,
            retry,
            limit,
            breaker: breaker_layer,
        })
    }
}

impl<B, D> Service<Request<B>> for MeshClient<B, D>
where
    B: RequestBody,
    D: Dialect,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = ResponseFuture<B, D>;

    /// Always ready: the client routes; each destination's balancer fails fast or waits per
    /// request (see `mesh_core::balance`).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.request(req)
    }
}

impl<B, D> fmt::Debug for MeshClient<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshClient")
            .field("mesh", &self.inner.mesh)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A handle on one destination of a [`MeshClient`] (see [`MeshClient::target`]). Cheap to clone.
pub struct Target<B, D = HttpClassifier> {
    dest: Arc<Dest<B, D>>,
    authority: http::uri::Authority,
}

impl<B, D> Clone for Target<B, D> {
    fn clone(&self) -> Self {
        Self {
            dest: self.dest.clone(),
            authority: self.authority.clone(),
        }
    }
}

impl<B, D> Target<B, D>
where
    B: RequestBody,
    D: Dialect,
{
    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.dest.name
    }

    /// Sends a request to this destination. A request in origin form (`/path`) gets the
    /// target's authority; an absolute URI is sent as it is (its authority is not routed by).
    pub fn request(&self, mut req: Request<B>) -> ResponseFuture<B, D> {
        if req.uri().authority().is_none() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.authority.clone());
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            match Uri::from_parts(parts) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return ResponseFuture::failed(Error::MissingAuthority),
            }
        }
        MeshClient::route(&self.dest, req)
    }

    /// Counters and endpoint states of this destination.
    pub fn stats(&self) -> DestinationStats {
        self.dest.stats()
    }
}

impl<B, D> fmt::Debug for Target<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("service", &self.dest.name)
            .finish_non_exhaustive()
    }
}

/// What every endpoint of one destination is reached with.
struct Targets {
    service: ServiceName,
    protocol: Protocol,
    tls_policy: ClientTlsPolicy,
    settings: ClientSettings,
}

impl Targets {
    fn target(&self, endpoint: &mesh_core::Endpoint) -> EndpointTarget {
        EndpointTarget {
            service: self.service.clone(),
            endpoint: endpoint.clone(),
            protocol: self.protocol,
            tls: tls_target(
                &self.service,
                endpoint,
                self.protocol,
                &self.tls_policy,
                self.settings.tls.as_ref(),
            )
            .map(Arc::new),
            settings: self.settings.clone(),
        }
    }
}

/// Decides whether an endpoint is reached over mTLS, and with which expected identity.
fn tls_target(
    service: &ServiceName,
    endpoint: &mesh_core::Endpoint,
    protocol: Protocol,
    policy: &ClientTlsPolicy,
    store: Option<&TlsStore>,
) -> Option<TlsTarget> {
    let store = store?;
    let expected = endpoint
        .identity
        .clone()
        .or_else(|| policy.identity.clone());
    let mutual = match policy.mode {
        ClientTlsMode::Disable => false,
        ClientTlsMode::Mutual => true,
        ClientTlsMode::Auto => expected.is_some(),
    };
    if !mutual {
        return None;
    }
    let alpn: &[&[u8]] = match protocol {
        Protocol::Http2 => &[mesh_core::tls::ALPN_H2],
        Protocol::Http1 => &[mesh_core::tls::ALPN_HTTP11],
    };
    let config = match store.client_config(expected.clone(), alpn) {
        Ok(c) => c,
        Err(e) => {
            // The store's material was validated when loaded; this would be a rustls refusal of
            // the protocol versions. Connecting in plaintext instead would be wrong: fail the
            // endpoint's connections by giving it a config that cannot verify anything.
            tracing::error!(%service, endpoint = %endpoint.addr, error = %e, "cannot build TLS client configuration");
            return None;
        }
    };
    // The verifier checks the SPIFFE ID, not names; the service host is sent as SNI when it is
    // a DNS name (a server may route on it), otherwise the endpoint's IP.
    let server_name = ServerName::try_from(service.host().to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(endpoint.addr.ip().into()));
    tracing::debug!(%service, endpoint = %endpoint.addr, expected = ?expected, "endpoint uses mTLS");
    Some(TlsTarget {
        connector: tokio_rustls::TlsConnector::from(config),
        server_name,
        store: store.clone(),
    })
}

type StackFuture<B, D> = timeout::ResponseFuture<
    mesh_core::retry::ResponseFuture<Breaker<Limit<Balanced<B, D>>, D>, B, D>,
>;

pin_project! {
    /// Response future of [`MeshClient`].
    pub struct ResponseFuture<B: RequestBody, D: Dialect> {
        #[pin]
        state: State<B, D>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B: RequestBody, D: Dialect> {
        Routed { #[pin] fut: StackFuture<B, D>, span: Option<tracing::Span> },
        Failed { error: Option<Error> },
    }
}

impl<B: RequestBody, D: Dialect> ResponseFuture<B, D> {
    fn routed(fut: StackFuture<B, D>, span: Option<tracing::Span>) -> Self {
        Self {
            state: State::Routed { fut, span },
        }
    }

    fn failed(error: Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<B: RequestBody, D: Dialect> Future for ResponseFuture<B, D> {
    type Output = Result<Response<Incoming>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Routed { fut, span } => match span {
                // Polled inside the request's span only when tracing wants it.
                Some(span) => {
                    let _enter = span.enter();
                    fut.poll(cx)
                }
                None => fut.poll(cx),
            },
            StateProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

/// Checks the scheme and makes an origin-form request (`/path` + `Host`) absolute, as
/// hyper-util's client requires.
fn prepare<B>(req: &mut Request<B>) -> Result<(), Error> {
    match req.uri().scheme() {
        None => {}
        Some(s) if *s == Scheme::HTTP => {}
        Some(s) => return Err(Error::UnsupportedScheme(s.to_string())),
    }
    if req.uri().authority().is_none() {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or(Error::MissingAuthority)?;
        *req.uri_mut() = absolutize(req.uri(), host)?;
    }
    Ok(())
}

/// Builds an absolute `http://` URI for a request that only has a path (origin form) and a
/// `Host` header.
fn absolutize(uri: &Uri, host: &str) -> Result<Uri, Error> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(pq)
        .build()
        .map_err(|_| Error::MissingAuthority)
}
