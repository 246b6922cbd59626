//! Serving one accepted connection: hyper with the server's limits, closed when idle or when
//! the server drains.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use pin_project_lite::pin_project;
use tokio::{sync::watch, time::Instant};
use tower_service::Service;

use super::{Accepted, HttpVersion, ServerSettings, WithPeer};

/// Serves `accepted` until it ends, is idle for the settings' idle timeout, or `stopped` turns
/// true (then it drains: HTTP/1.1 closes after the response in progress, HTTP/2 sends `GOAWAY`
/// and finishes its streams).
pub(super) async fn serve_connection<S, B>(
    accepted: Accepted,
    service: S,
    settings: &ServerSettings,
    mut stopped: watch::Receiver<bool>,
) where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Accepted {
        stream,
        identity,
        version,
    } = accepted;
    let peer = stream.get_ref().peer_addr();
    let activity = Arc::new(Activity::new());
    let svc = TowerToHyperService::new(Tracked {
        inner: WithPeer::new(service, identity),
        activity: activity.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder = match version {
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_only(),
    };
    builder
        .http1()
        // With a timer, hyper bounds the wait for each request head (and so the keep-alive
        // idle time between requests).
        .timer(TokioTimer::new())
        .header_read_timeout(settings.request_head_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.http2_keep_alive_interval)
        .keep_alive_timeout(settings.http2_keep_alive_timeout)
        .max_concurrent_streams(settings.http2_max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_bytes)
        .max_pending_accept_reset_streams(settings.http2_max_pending_accept_resets);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        let idle_at = settings
            .idle_timeout
            .filter(|_| !closing)
            .map(|t| activity.idle_deadline(t));
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped.wait_for(|stop| *stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = sleep_until(idle_at), if idle_at.is_some() => {
                if let Some(timeout) = settings.idle_timeout {
                    if activity.idle_for(timeout) {
                        tracing::debug!(%peer, ?timeout, "idle connection closed");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Requests in flight on one connection, and when the last one ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the connection was last busy.
    last_busy_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_busy_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// When the connection will have been idle for `timeout`, if nothing happens meanwhile.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Relaxed) > 0 {
            return Instant::now() + timeout;
        }
        self.start + Duration::from_millis(self.last_busy_ms.load(Relaxed)) + timeout
    }

    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Relaxed) == 0
            && Duration::from_millis(
                self.now_ms()
                    .saturating_sub(self.last_busy_ms.load(Relaxed)),
            ) >= timeout
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Relaxed);
        Busy(self.clone())
    }
}

/// One request in flight, from the call until its response body is done or dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_busy_ms.store(self.0.now_ms(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Counts a connection's requests in flight (for its idle timeout).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, Req, B> Service<Req> for Tracked<S>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        TrackedFuture {
            busy: Some(self.activity.begin()),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        busy: Option<Busy>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.inner.poll(cx))?;
        let busy = this.busy.take();
        Poll::Ready(Ok(rsp.map(|body| TrackedBody { body, busy })))
    }
}

pin_project! {
    /// A response body that keeps its connection busy until it ends.
    struct TrackedBody<B> {
        #[pin]
        body: B,
        busy: Option<Busy>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        if frame.is_none() {
            this.busy.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
