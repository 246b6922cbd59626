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

mod backend;
mod build;
mod connect;
mod destination;
mod dialect;
mod endpoint;
mod future;
mod h2;
mod mirror;
mod router;
mod settings;
mod sweep;
mod target;
mod tls;

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri, uri::Scheme};
use http_body_util::Full;
use hyper::body::Incoming;
use mesh_core::{
    Mesh, ServiceName,
    balance::EndpointStats,
    telemetry::{DestinationSnapshot, DestinationSource, Unroutable},
    trace_context::TraceContext,
};
use tower_service::Service;

use self::destination::Dest;
pub use self::{
    dialect::{Dialect, EndpointTarget},
    endpoint::{EndpointFuture, HttpEndpoint},
    future::ResponseFuture,
    mirror::{MAX_MIRRORS_IN_FLIGHT, MIRROR_TIMEOUT, MirrorCounts},
    target::Target,
    tls::EndpointStream,
};
use crate::{
    Error, HttpClassifier,
    server::{TRACEPARENT_HEADER, TRACESTATE_HEADER},
};

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

pub use self::settings::{BackendStats, ClientSettings};

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
    /// Endpoint feeds by service, shared by the backends of that service.
    feeds: Mutex<HashMap<ServiceName, std::sync::Weak<backend::Feed>>>,
    /// Backends by (service, subset), shared by the routes of every destination.
    backends: Mutex<build::Backends<B, D>>,
    /// Whether the task dropping idle on-demand destinations runs.
    sweeping: std::sync::atomic::AtomicBool,
}

/// Destinations keyed by the authority spelling requests use.
type ByAuthority<B, D> = HashMap<Box<str>, Arc<Dest<B, D>>>;

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
        if let Some(t) = &settings.telemetry {
            t.track_mesh(&mesh);
            if let Some(store) = &settings.tls {
                t.track_tls(store);
            }
        }
        Self {
            inner: Arc::new(Inner {
                mesh,
                settings,
                dialect,
                by_authority: ArcSwap::from_pointee(HashMap::new()),
                by_name: Mutex::new(HashMap::new()),
                feeds: Mutex::new(HashMap::new()),
                backends: Mutex::new(HashMap::new()),
                sweeping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The mesh the client resolves names with.
    pub fn mesh(&self) -> &Mesh {
        &self.inner.mesh
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
            _client: self.clone(),
        })
    }

    /// Sends a request (the same call as hyper-util's `Client::request`).
    pub fn request(&self, mut req: Request<B>) -> ResponseFuture<B, D> {
        if let Err(e) = prepare(&mut req) {
            return self.unroutable(e);
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .unwrap_or_default();
        // Fast path: a known authority, routed under the map's guard (no reference counting).
        // An idle sweep dropping this destination meanwhile leaves the request working (the
        // guard keeps the old map, and the destination, alive until it is routed); only its
        // metrics go with the dropped destination.
        if let Some(dest) = self.inner.by_authority.load().get(authority) {
            return Self::send(dest, req);
        }
        match self.destination(authority) {
            Ok(dest) => Self::send(&dest, req),
            Err(e) => self.unroutable(e),
        }
    }

    /// Fails a request that no destination could take, counting it.
    fn unroutable(&self, e: Error) -> ResponseFuture<B, D> {
        tracing::debug!(error = %e, "request not routable");
        if let Some(t) = &self.inner.settings.telemetry {
            t.unroutable(match &e {
                Error::MissingAuthority => Unroutable::MissingAuthority,
                Error::UnsupportedScheme(_) => Unroutable::UnsupportedScheme,
                Error::Policy { .. } => Unroutable::Policy,
                _ => Unroutable::Resolve,
            });
        }
        ResponseFuture::failed(e)
    }

    fn send(dest: &Dest<B, D>, mut req: Request<B>) -> ResponseFuture<B, D> {
        dest.touch();
        let trace = if dest.trace_context {
            inject_trace_context(&mut req)
        } else {
            None
        };
        let record = dest
            .metrics
            .as_ref()
            .map(|m| future::Record::start(m, &dest.dialect));
        let span = tracing::debug_span!("mesh", service = %dest.name,
            endpoint = tracing::field::Empty, attempt = 1u32, trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty, parent_id = tracing::field::Empty);
        if span.is_disabled() {
            return ResponseFuture::routed(dest.routing().route(req), None, record);
        }
        if let Some(trace) = trace {
            // The span id sent downstream: the next hop's `inbound` span names it as parent.
            trace.record_on(&span);
        }
        let fut = {
            let _enter = span.enter();
            dest.routing().route(req)
        };
        ResponseFuture::routed(fut, Some(span), record)
    }

    /// The endpoints of a service as its balancer sees them (load, in-flight, health), if the
    /// client has sent to it.
    pub fn endpoints(&self, service: &ServiceName) -> Option<Vec<EndpointStats>> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        self.find(&by_name, service).map(|d| d.endpoints())
    }

    /// One endpoint of a service as its balancer sees it, if the client has sent to the
    /// service and the endpoint is in its current set: a lookup, cheap at any size, where
    /// [`endpoints`](Self::endpoints) copies them all.
    pub fn endpoint(&self, service: &ServiceName, addr: SocketAddr) -> Option<EndpointStats> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        self.find(&by_name, service).and_then(|d| d.endpoint(addr))
    }

    /// Mirror counters of a service (copies sent, failed, skipped), if the client has sent to it.
    pub fn mirrors(&self, service: &ServiceName) -> Option<MirrorCounts> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        self.find(&by_name, service).map(|d| d.mirrors.counts())
    }

    /// The backends the routes of a service use now, with their endpoints (each subset is a
    /// backend of its own), if the client has sent to it.
    pub fn backends(&self, service: &ServiceName) -> Option<Vec<BackendStats>> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let dest = self.find(&by_name, service)?;
        drop(by_name);
        let routing = dest.routing();
        let mut out: Vec<BackendStats> = Vec::new();
        for b in routing.backends() {
            if out
                .iter()
                .any(|o| o.service == b.service && o.subset.as_deref() == b.subset.as_deref())
            {
                continue;
            }
            out.push(BackendStats {
                service: b.service.clone(),
                subset: b.subset.as_deref().map(str::to_owned),
                endpoints: b.balancer.endpoints(),
            });
        }
        Some(out)
    }

    /// Counters and endpoint states of a service, if the client has sent to it.
    pub fn stats(&self, service: &ServiceName) -> Option<DestinationSnapshot> {
        let by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        self.find(&by_name, service).map(|d| d.snapshot())
    }

    /// The destination of `service`: by the name it resolved to, or by any spelling requests
    /// used for it.
    fn find(
        &self,
        by_name: &HashMap<ServiceName, Arc<Dest<B, D>>>,
        service: &ServiceName,
    ) -> Option<Arc<Dest<B, D>>> {
        if let Some(d) = by_name.get(service) {
            return Some(d.clone());
        }
        self.inner
            .by_authority
            .load()
            .iter()
            .find(|(a, _)| ServiceName::from_authority(a, 80).is_ok_and(|n| n == *service))
            .map(|(_, d)| d.clone())
    }

    /// Finds or builds the destination of an authority not seen before.
    fn destination(&self, authority: &str) -> Result<Arc<Dest<B, D>>, Error> {
        let name =
            ServiceName::from_authority(authority, 80).map_err(|e| Error::Resolve(e.into()))?;
        let mut by_name = self.inner.by_name.lock().unwrap_or_else(|e| e.into_inner());
        // One destination per service, whatever spelling (`reviews`, `reviews.default`, the
        // FQDN) requests use: keyed by the name the mesh resolves them to.
        let resolved = self.inner.mesh.resolve_name(name)?;
        let dest = match by_name.get(&resolved.name) {
            Some(d) => d.clone(),
            None => {
                let name = resolved.name.clone();
                let dest = Dest::new(
                    &self.inner,
                    resolved.name,
                    resolved.config,
                    resolved.on_demand,
                )?;
                if let Some(t) = &self.inner.settings.telemetry {
                    let weak: std::sync::Weak<dyn DestinationSource> =
                        Arc::downgrade(&dest) as std::sync::Weak<Dest<B, D>>;
                    t.track_destination(weak);
                }
                by_name.insert(name, dest.clone());
                if dest.on_demand {
                    self.start_sweeping();
                }
                dest
            }
        };
        let mut map = HashMap::clone(&self.inner.by_authority.load());
        map.insert(authority.into(), dest.clone());
        self.inner.by_authority.store(Arc::new(map));
        Ok(dest)
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

/// Marks a header value whose content changes on every request (`traceparent`, `grpc-timeout`)
/// as not to be indexed by HPACK. h2 would otherwise insert each new value into the
/// connection's dynamic table on both ends, evicting the headers that do repeat (`:authority`,
/// `content-type`, `te`, ...) so that those are sent as literals again: under callgrind,
/// indexing `traceparent` cost the gRPC path ≈ 3,200 instructions per call in table upkeep and
/// re-encoding. The flag is HTTP's "sensitive" one: h2 then sends a never-indexed literal, and
/// `Debug` shows the value as `Sensitive`. HTTP/1.1 ignores it.
pub fn no_hpack_indexing(value: &mut HeaderValue) {
    value.set_sensitive(true);
}

/// Gives a request without `traceparent` the trace context of the task's current request (as
/// a child span), or a new trace; returns the context sent. A request that already has one
/// (the application traces itself) is left alone.
fn inject_trace_context<B>(req: &mut Request<B>) -> Option<TraceContext> {
    use http::header::Entry;
    let Entry::Vacant(slot) = req.headers_mut().entry(&TRACEPARENT_HEADER) else {
        return None;
    };
    let ctx = TraceContext::current().map_or_else(TraceContext::new_root, |c| c.child());
    let Ok(mut v) = HeaderValue::from_bytes(&ctx.traceparent_bytes()) else {
        return None;
    };
    // A new value on every request: HPACK must not put it in its dynamic table (HTTP/2), where
    // it would only push out the headers that repeat (see `no_hpack_indexing`).
    no_hpack_indexing(&mut v);
    slot.insert(v);
    if let Some(v) = ctx.tracestate().and_then(|s| HeaderValue::from_str(s).ok()) {
        req.headers_mut().insert(&TRACESTATE_HEADER, v);
    }
    Some(ctx)
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::SocketAddr, sync::Arc};

    use bytes::Bytes;
    use http_body_util::{Empty, Full};
    use hyper_util::rt::TokioIo;
    use mesh_core::Mesh;
    use tokio::sync::Notify;

    use super::{ClientSettings, MeshClient};

    /// A server that answers once `release` is notified.
    async fn gated_server(release: Arc<Notify>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let release = release.clone();
                let svc = hyper::service::service_fn(move |_req| {
                    let release = release.clone();
                    async move {
                        release.notified().await;
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        addr
    }

    #[test]
    fn traceparent_is_injected_and_kept_out_of_hpack_tables() {
        let mut req = http::Request::new(());
        let sent = super::inject_trace_context(&mut req).expect("a new trace");
        let v = &req.headers()[&crate::server::TRACEPARENT_HEADER];
        assert!(
            v.is_sensitive(),
            "a per-request value must not be HPACK-indexed"
        );
        assert_eq!(v.to_str().unwrap(), sent.traceparent());
        // A request that carries its own is left alone.
        assert!(super::inject_trace_context(&mut req).is_none());
    }

    #[tokio::test]
    async fn idle_sweeps_count_from_the_last_request_or_response() {
        let release = Arc::new(Notify::new());
        let addr = gated_server(release.clone()).await;
        let mesh = Mesh::builder().without_dns_fallback().build().unwrap();
        // No sweeping task: the sweeps are run by hand.
        let client = MeshClient::<Empty<Bytes>>::with_settings(
            mesh,
            ClientSettings {
                destination_idle_timeout: None,
                ..ClientSettings::default()
            },
        );
        let name = addr.to_string().parse().unwrap();
        let get = || {
            http::Request::get(format!("http://{addr}/"))
                .body(Empty::new())
                .unwrap()
        };

        // In flight across many sweeps: kept.
        let in_flight = tokio::spawn(client.request(get()));
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while client.endpoints(&name).is_none_or(|e| e[0].in_flight == 0) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the request reaches its endpoint");
        for _ in 0..5 {
            client.inner.sweep();
        }
        assert!(client.stats(&name).is_some(), "dropped while in flight");
        release.notify_one();
        assert_eq!(in_flight.await.unwrap().unwrap().status(), 200);

        // Answered: two whole idle sweeps after the one that saw it busy, then dropped.
        for sweep in 1..=2 {
            client.inner.sweep();
            assert!(client.stats(&name).is_some(), "dropped at sweep {sweep}");
        }
        client.inner.sweep();
        assert!(client.stats(&name).is_none(), "kept although idle");

        // Built again by the next request; a `Target` holds it however idle.
        release.notify_one();
        let target = client.target(&addr.to_string()).unwrap();
        assert_eq!(client.request(get()).await.unwrap().status(), 200);
        for _ in 0..5 {
            client.inner.sweep();
        }
        assert!(
            client.stats(&name).is_some(),
            "dropped while a Target held it"
        );
        drop(target);
        for _ in 0..3 {
            client.inner.sweep();
        }
        assert!(client.stats(&name).is_none());
    }
}
