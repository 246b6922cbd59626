//! Serving a hyper application behind the mesh's acceptor.

use std::{
    convert::Infallible,
    future::Future,
    task::{Context, Poll},
};

use std::sync::Arc;

use http_body::Body;
use hyper::body::Incoming;
use mesh_core::identity::PeerIdentity;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tower_service::Service;

use super::{Acceptor, ServerSettings};

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
/// descriptors) are logged and retried after a short pause. Connections belong to the server:
/// dropping (aborting) it closes them. [`serve_with_shutdown`] is the same with a graceful end.
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

/// [`serve`] until `shutdown` completes (the application passes its signal in: SIGTERM, say,
/// which Kubernetes sends while it removes the pod from the service's endpoints; a `preStop`
/// delay, or a short sleep before the signal completes, lets clients stop routing here first),
/// then drains: the listener is closed, handshakes in progress are dropped, idle connections are
/// closed, an HTTP/1.1 connection with a request in progress closes after its response, and an
/// HTTP/2 connection gets a `GOAWAY` and finishes the streams it has. Returns when the last
/// connection has ended.
///
/// **Always bound the drain** (Kubernetes' own bound is the pod's termination grace period): a
/// client can keep a stream open, or not answer HTTP/2's closing ping. Dropping the future —
/// the timeout below — closes every connection still open.
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
    serve_with_settings(
        listener,
        acceptor,
        ServerSettings::default(),
        service,
        shutdown,
    )
    .await;
}

/// [`serve_with_shutdown`] with the given connection limits (see [`ServerSettings`] for every
/// stage's bound and its default).
pub async fn serve_with_settings<S, B>(
    listener: TcpListener,
    acceptor: Acceptor,
    settings: ServerSettings,
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
    let announcements = settings.announcements.clone();
    let shutdown = async move {
        shutdown.await;
        for a in &announcements {
            tracing::info!(announcement = ?a, "shutting down: withdrawing the registration");
            if tokio::time::timeout(super::settings::WITHDRAW_TIMEOUT, a.withdraw())
                .await
                .is_err()
            {
                tracing::warn!(announcement = ?a, "withdrawal timed out; the record expires with its lease");
            }
        }
    };
    let settings = Arc::new(settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    // Tells connections to drain (and those still in their handshake to give up).
    let (stop, stopped) = watch::channel(false);
    // Owned by this future: dropping it (a bounded drain that ran out) closes them all.
    let mut connections = JoinSet::new();
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
            // Finished connections leave the set.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed at once: the client learns now, rather than after a backlog wait.
            tracing::debug!(%addr, max = settings.max_connections, "connection refused: too many connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = service.clone();
        let settings = settings.clone();
        let mut stopped = stopped.clone();
        connections.spawn(async move {
            let _slot = slot;
            let accepted = tokio::select! {
                accepted = acceptor.accept_http(tcp) => accepted,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            match accepted {
                Ok(accepted) => {
                    super::conn::serve_connection(accepted, service, &settings, stopped).await;
                }
                Err(e) => tracing::debug!(%addr, error = %e, "connection not accepted"),
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    tracing::info!(
        connections = connections.len(),
        "server shutting down: draining connections"
    );
    while connections.join_next().await.is_some() {}
    tracing::info!("server drained");
}
