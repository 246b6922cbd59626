//! Dialing one endpoint: TCP to its address whatever the request names, and mTLS that
//! verifies its SPIFFE ID. Both the HTTP/1.1 pool and the HTTP/2 connections of an endpoint
//! connect through it.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{HttpConnector, dns::GaiResolver},
    rt::TokioIo,
};
use mesh_core::tls::{TlsSide, TlsStore};
use rustls::pki_types::ServerName;
use tower_service::Service;

use super::{ClientSettings, tls::EndpointStream};

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
    tls: Option<Arc<TlsTarget>>,
    /// Bound on the TLS handshake (the connect timeout again: a peer that accepts TCP and then
    /// stalls must not hold a request until its overall timeout).
    handshake_timeout: std::time::Duration,
}

/// How to do mTLS to one endpoint.
pub(crate) struct TlsTarget {
    /// The rustls connector, or why none could be built: the endpoint must be reached over
    /// mTLS, so its connections then fail with that reason (never fall back to plaintext).
    pub(crate) connector: Result<tokio_rustls::TlsConnector, Arc<str>>,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) store: TlsStore,
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<EndpointStream, BoxError>> + Send>>;
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
            let connector = tls.connector.as_ref().map_err(|reason| {
                std::io::Error::other(format!("no TLS client configuration: {reason}"))
            })?;
            let handshake = connector.connect(tls.server_name.clone(), tcp.into_inner());
            let stream = match tokio::time::timeout(inner.handshake_timeout, handshake).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )),
            }
            .inspect_err(|e| {
                tls.store.count_handshake_failure(TlsSide::Client, e);
            })?;
            tls.store.count_handshake(TlsSide::Client);
            Ok(EndpointStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl EndpointConnector {
    /// The connector of the endpoint at `addr`.
    pub(crate) fn new(
        addr: SocketAddr,
        settings: &ClientSettings,
        tls: Option<Arc<TlsTarget>>,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(settings.tcp_keepalive);
        let target = Uri::builder()
            .scheme("http")
            .authority(addr.to_string())
            .path_and_query("/")
            .build()
            .expect("a socket address is a valid authority");
        EndpointConnector {
            inner: Arc::new(ConnectorInner {
                http,
                target,
                tls,
                handshake_timeout: settings.connect_timeout,
            }),
        }
    }
}
