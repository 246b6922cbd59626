//! Serving a hyper application behind the mesh's acceptor.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mesh_core::identity::PeerIdentity;
use tokio::net::TcpListener;
use tower_service::Service;

use super::Acceptor;

/// Puts the connection's peer identity into every request's extensions.
#[derive(Clone, Debug)]
pub struct WithPeer<S> {
    inner: S,
    identity: PeerIdentity,
}

impl<S> WithPeer<S> {
    /// Wraps `inner` for one connection.
    pub fn new(inner: S, identity: PeerIdentity) -> Self {
        Self { inner, identity }
    }
}

impl<S, B> Service<http::Request<B>> for WithPeer<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.identity.clone());
        self.inner.call(req)
    }
}

/// Accepts connections on `listener` forever, each through `acceptor` (mTLS / plaintext per its
/// mode), and serves `service` on it with hyper (HTTP/1.1 and HTTP/2, by ALPN or prior
/// knowledge). Requests carry [`PeerIdentity`] in their extensions. Connection
/// errors are logged at `debug` and do not stop the server; accept errors (out of file
/// descriptors) are logged and retried after a short pause.
pub async fn serve<S, B>(listener: TcpListener, acceptor: Acceptor, service: S) -> Infallible
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let (stream, identity) = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "connection not accepted");
                    return;
                }
            };
            let svc = TowerToHyperService::new(WithPeer::new(service, identity));
            let io = TokioIo::new(stream);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
}
