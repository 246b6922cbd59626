//! Serving a hyper application behind the mesh's acceptor.

use std::{
    convert::Infallible,
    future::Future,
    task::{Context, Poll},
};

use http_body::Body;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use mesh_core::identity::PeerIdentity;
use tokio::{net::TcpListener, sync::watch};
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
/// descriptors) are logged and retried after a short pause. [`serve_with_shutdown`] is the same
/// with a graceful end.
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
    serve_with_shutdown(listener, acceptor, service, std::future::pending()).await;
    // The signal never comes, so the server above never returns.
    std::future::pending().await
}

/// [`serve`] until `shutdown` completes (a SIGTERM, say: what Kubernetes sends before it
/// removes a pod), then drains: the listener is closed, handshakes in progress are dropped, and
/// every connection is asked to finish gracefully — HTTP/1.1 connections close after the
/// response in progress, HTTP/2 ones get a `GOAWAY` and finish the streams they have. Returns
/// when the last connection has ended. Bound the drain with a timeout when a client may hold a
/// stream open (Kubernetes' own bound is the pod's termination grace period):
///
/// ```no_run
/// use std::time::Duration;
/// use mesh_hyper::server::{Acceptor, serve_with_shutdown};
///
/// # async fn run(app: tower::util::BoxCloneSyncService<http::Request<hyper::body::Incoming>, http::Response<String>, std::convert::Infallible>) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:9080").await?;
/// let sigterm = async {
///     let _ = tokio::signal::ctrl_c().await; // or tokio::signal::unix's SIGTERM
/// };
/// let drained = serve_with_shutdown(listener, Acceptor::plaintext(), app, sigterm);
/// let _ = tokio::time::timeout(Duration::from_secs(25), drained).await;
/// # Ok(()) }
/// ```
pub async fn serve_with_shutdown<S, B>(
    listener: TcpListener,
    acceptor: Acceptor,
    service: S,
    shutdown: impl Future<Output = ()>,
) where
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
    let graceful = GracefulShutdown::new();
    // Tells connections still in their handshake to give up.
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        // Taken now, so that the drain waits for this connection whatever stage it is at.
        let watcher = graceful.watcher();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let accepted = tokio::select! {
                accepted = acceptor.accept(tcp) => accepted,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let (stream, identity) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "connection not accepted");
                    return;
                }
            };
            let svc = TowerToHyperService::new(WithPeer::new(service, identity));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%addr, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!(
        connections = graceful.count(),
        "server shutting down: draining connections"
    );
    graceful.shutdown().await;
    tracing::info!("server drained");
}
