//! One endpoint: for HTTP/1.1 a hyper-util pooled client whose connector always dials that
//! endpoint; for HTTP/2 the endpoint's own connections ([`super::h2`]).

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, ResponseFuture as HyperFuture};
use mesh_core::{Protocol, ServiceName, classify::ServedBy, tls::IdentityMismatch};
use tower_service::Service;

use super::{
    RequestBody,
    connect::{BoxError, EndpointConnector},
    dialect::{Dialect, EndpointTarget},
    h2::{H2Connection, H2Failure, H2Future},
};
use crate::Error;

/// The service behind one endpoint: for HTTP/1.1 its own connection pool (hyper-util legacy
/// client); for HTTP/2 its own multiplexed connection, or several when
/// `ClientSettings::http2_connections_per_endpoint` asks for more (requests then take them in
/// turn). `D` is the protocol [`Dialect`] (it may add headers to each attempt).
pub struct HttpEndpoint<B, D> {
    inner: Arc<Inner<B, D>>,
}

/// How an endpoint's requests are carried.
// One per endpoint, inside its `Arc` and never moved: boxing the pool would add a pointer
// chase to every HTTP/1.1 request for nothing.
#[allow(clippy::large_enum_variant)]
enum Connections<B> {
    /// HTTP/1.1: a pool.
    Pooled(Client<EndpointConnector, B>),
    /// HTTP/2: one or more connections held directly.
    Http2(Box<[Arc<H2Connection<B>>]>),
}

struct Inner<B, D> {
    connections: Connections<B>,
    next: AtomicUsize,
    addr: SocketAddr,
    service: ServiceName,
    dialect: D,
}

impl<B, D> Clone for HttpEndpoint<B, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B, D> HttpEndpoint<B, D>
where
    B: RequestBody,
{
    pub(crate) fn new(target: &EndpointTarget, dialect: D) -> Self {
        let settings = &target.settings;
        let connector = EndpointConnector::new(target.endpoint.addr, settings, target.tls.clone());
        let connections = if target.protocol == Protocol::Http2 {
            let count = settings.http2_connections_per_endpoint.max(1);
            Connections::Http2(
                (0..count)
                    .map(|_| H2Connection::new(connector.clone()))
                    .collect(),
            )
        } else {
            Connections::Pooled(
                Client::builder(hyper_util::rt::TokioExecutor::new())
                    .pool_timer(hyper_util::rt::TokioTimer::new())
                    .pool_idle_timeout(settings.pool_idle_timeout)
                    .pool_max_idle_per_host(settings.pool_max_idle_per_endpoint)
                    .build(connector),
            )
        };
        Self {
            inner: Arc::new(Inner {
                connections,
                next: AtomicUsize::new(0),
                addr: target.endpoint.addr,
                service: target.service.clone(),
                dialect,
            }),
        }
    }
}

impl<B, D> Service<Request<B>> for HttpEndpoint<B, D>
where
    B: RequestBody,
    D: Dialect,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = EndpointFuture<B, D>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the HTTP/1.1 pool connects per request, an HTTP/2 connection is made
        // by the request that needs it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let inner = &self.inner;
        inner.dialect.before_send(&mut req);
        let fut = match &inner.connections {
            Connections::Pooled(client) => Sent::Pooled(client.request(req)),
            Connections::Http2(conns) => {
                let conn = match conns.len() {
                    1 => &conns[0],
                    n => &conns[inner.next.fetch_add(1, Relaxed) % n],
                };
                Sent::Http2(conn.send(req))
            }
        };
        EndpointFuture {
            fut,
            endpoint: self.inner.clone(),
        }
    }
}

/// A request on its way: through the pool or on an HTTP/2 connection.
enum Sent {
    Pooled(HyperFuture),
    Http2(H2Future),
}

/// What failed, for the error of the request.
enum Failure {
    Connect(BoxError),
    Request(BoxError),
}

/// Response future of [`HttpEndpoint`].
pub struct EndpointFuture<B, D> {
    fut: Sent,
    endpoint: Arc<Inner<B, D>>,
}

impl<B, D: Dialect> Future for EndpointFuture<B, D> {
    type Output = Result<Response<Incoming>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = match &mut self.fut {
            Sent::Pooled(f) => ready!(Pin::new(f).poll(cx)).map_err(|e| {
                if e.is_connect() {
                    Failure::Connect(Box::new(e))
                } else {
                    Failure::Request(Box::new(e))
                }
            }),
            Sent::Http2(f) => ready!(f.as_mut().poll(cx)).map_err(|e| match e {
                H2Failure::Connect(e) => Failure::Connect(e),
                H2Failure::Request(e) => Failure::Request(Box::new(e)),
            }),
        };
        let addr = self.endpoint.addr;
        Poll::Ready(
            res.map(|mut rsp| {
                if self.endpoint.dialect.marks_endpoint(&rsp) {
                    // Failed answers say who gave them, so that a retry can go elsewhere.
                    rsp.extensions_mut().insert(ServedBy(addr));
                }
                rsp
            })
            .map_err(|failure| {
                let (service, endpoint) = (self.endpoint.service.clone(), self.endpoint.addr);
                let (connect, source) = match failure {
                    Failure::Connect(e) => (true, e),
                    Failure::Request(e) => (false, e),
                };
                if let Some(mismatch) = IdentityMismatch::find_in(&*source).cloned() {
                    tracing::debug!(%service, %endpoint, error = %mismatch, "server identity mismatch");
                    return Error::IdentityMismatch {
                        service,
                        endpoint,
                        mismatch,
                    };
                }
                if connect {
                    tracing::debug!(%service, %endpoint, error = %source, "connect failed");
                    Error::Connect {
                        service,
                        endpoint,
                        source,
                    }
                } else {
                    tracing::debug!(%service, %endpoint, error = %source, "request failed");
                    Error::Request {
                        service,
                        endpoint,
                        source,
                    }
                }
            }),
        )
    }
}

impl<B, D> fmt::Debug for HttpEndpoint<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("service", &self.inner.service)
            .field("addr", &self.inner.addr)
            .finish()
    }
}
