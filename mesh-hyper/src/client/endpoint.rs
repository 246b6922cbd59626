//! One endpoint: a hyper-util pooled client whose connector always dials that endpoint.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client, ResponseFuture as HyperFuture,
        connect::{HttpConnector, dns::GaiResolver},
    },
    rt::TokioIo,
};
use mesh_core::{Endpoint, Protocol, ServiceName, classify::ServedBy, tls::TlsStore};
use rustls::pki_types::ServerName;

use super::tls::EndpointStream;
use tower_service::Service;

use super::{ClientSettings, RequestBody};
use crate::Error;

/// The connector of one endpoint: hyper-util's `HttpConnector` (TCP_NODELAY, keepalive,
/// connect timeout), pointed at the endpoint's address whatever the request URI says, and, for
/// mTLS endpoints, a rustls handshake that verifies the endpoint's SPIFFE ID.
///
/// The request keeps its logical URI (`http://reviews.default:9080/...`), so hyper-util writes
/// `Host: reviews.default:9080` (HTTP/1.1) or `:authority` (HTTP/2) as the application meant it,
/// and keys its pool by that name, which is fine: each endpoint has its own client and pool.
/// One `Arc`: hyper-util clones the client (and so the connector) on every request.
#[derive(Clone)]
pub(crate) struct EndpointConnector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    http: HttpConnector<GaiResolver>,
    target: Uri,
    tls: Option<TlsTarget>,
}

/// How to do mTLS to one endpoint.
pub(crate) struct TlsTarget {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) store: TlsStore,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<EndpointStream, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for EndpointConnector {
    type Response = EndpointStream;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // HttpConnector is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _logical: Uri) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let tcp = inner.http.clone().call(inner.target.clone()).await?;
            let Some(tls) = &inner.tls else {
                return Ok(EndpointStream::Plain(tcp));
            };
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), tcp.into_inner())
                .await?;
            tls.store.count_handshake();
            Ok(EndpointStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// The service behind one endpoint: its own connection pool (hyper-util legacy client).
pub struct HttpEndpoint<B> {
    inner: Arc<Inner<B>>,
}

struct Inner<B> {
    client: Client<EndpointConnector, B>,
    addr: SocketAddr,
    service: ServiceName,
}

impl<B> Clone for HttpEndpoint<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<B> HttpEndpoint<B>
where
    B: RequestBody,
{
    pub(crate) fn new(
        service: ServiceName,
        endpoint: &Endpoint,
        protocol: Protocol,
        settings: &ClientSettings,
        tls: Option<TlsTarget>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(settings.tcp_keepalive);
        let target = Uri::builder()
            .scheme("http")
            .authority(endpoint.addr.to_string())
            .path_and_query("/")
            .build()
            .expect("a socket address is a valid authority");
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(settings.pool_idle_timeout)
                .pool_max_idle_per_host(settings.pool_max_idle_per_endpoint)
                .http2_only(protocol == Protocol::Http2)
                .build(EndpointConnector {
                    inner: Arc::new(ConnectorInner { http, target, tls }),
                });
        Self {
            inner: Arc::new(Inner {
                client,
                addr: endpoint.addr,
                service,
            }),
        }
    }
}

impl<B> Service<Request<B>> for HttpEndpoint<B>
where
    B: RequestBody,
{
    type Response = Response<Incoming>;
    type Error = Error;
    type Future = EndpointFuture<B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // hyper-util's client is always ready: it pools or connects per request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        EndpointFuture {
            fut: self.inner.client.request(req),
            endpoint: self.inner.clone(),
        }
    }
}

/// Response future of [`HttpEndpoint`].
pub struct EndpointFuture<B> {
    fut: HyperFuture,
    endpoint: Arc<Inner<B>>,
}

impl<B> Future for EndpointFuture<B> {
    type Output = Result<Response<Incoming>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = ready!(Pin::new(&mut self.fut).poll(cx));
        let addr = self.endpoint.addr;
        Poll::Ready(
            res.map(|mut rsp| {
                if rsp.status().is_server_error() {
                    // Failed answers say who gave them, so that a retry can go elsewhere.
                    rsp.extensions_mut().insert(ServedBy(addr));
                }
                rsp
            })
            .map_err(|source| {
                let (service, endpoint) = (self.endpoint.service.clone(), self.endpoint.addr);
                if let Some(mismatch) = super::tls::identity_mismatch(&source) {
                    tracing::debug!(%service, %endpoint, error = %mismatch, "server identity mismatch");
                    return Error::IdentityMismatch {
                        service,
                        endpoint,
                        mismatch,
                    };
                }
                if source.is_connect() {
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

impl<B> fmt::Debug for HttpEndpoint<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("service", &self.inner.service)
            .field("addr", &self.inner.addr)
            .finish()
    }
}
