//! Golden-signal metrics of inbound requests: what a Linkerd or Istio sidecar reports for the
//! requests it hands to its application, recorded in-process.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use mesh_core::{
    identity::PeerIdentity,
    telemetry::{CallerMetrics, ErrorKind, PendingStatus, StatusKey, Telemetry},
};
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;

use crate::grpc::{code_from_http, grpc_status_of, is_grpc, status_of_frame};

/// Counts every inbound request by caller identity (the verified SPIFFE ID the acceptor put
/// in [`PeerIdentity`], `none` for plaintext) and final status, with its latency to the
/// response head and the requests in flight:
/// `mesh_server_responses_total{caller, status, outcome}`,
/// `mesh_server_response_latency_seconds{caller}`, `mesh_server_in_flight{caller}` (and the
/// `inbound` part of the debug snapshot).
///
/// The status is the response's HTTP class, or for gRPC calls (`content-type:
/// application/grpc`) the `grpc-status` of a trailers-only response or, for a normal one, of
/// its trailers when the body ends; a handler error counts as `error`, a request abandoned
/// before its status (the caller went away) as `cancelled`. A request is in flight until its
/// response body has been sent in full (or dropped). Outermost in the server's stack, it also
/// counts the requests authorization or rate limits refuse.
///
/// ```
/// use mesh_core::telemetry::{Registry, Telemetry};
/// use mesh_hyper::server::MetricsLayer;
/// use tower::ServiceBuilder;
///
/// let mut registry = Registry::default();
/// let telemetry = Telemetry::new(&mut registry);
/// let svc = ServiceBuilder::new()
///     .layer(MetricsLayer::new(telemetry))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # let _ = svc;
/// ```
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    telemetry: Telemetry,
}

impl MetricsLayer {
    /// Records into `telemetry`.
    pub fn new(telemetry: Telemetry) -> Self {
        Self { telemetry }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service of [`MetricsLayer`].
#[derive(Clone, Debug)]
pub struct Metrics<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Metrics<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<MetricsBody<ResB>>;
    type Error = S::Error;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.as_ref());
        let metrics = self.telemetry.server().caller(caller);
        let grpc = is_grpc(req.headers());
        let record = Record::start(metrics, grpc);
        MetricsFuture {
            inner: self.inner.call(req),
            record: Some(record),
        }
    }
}

/// One request in flight, until its status is counted and its response sent. Dropped before
/// the response head (the connection went away), it counts as cancelled.
struct Record {
    metrics: Arc<CallerMetrics>,
    grpc: bool,
    start: Instant,
    /// Whether the status (and latency) have been counted.
    counted: bool,
}

impl Record {
    fn start(metrics: Arc<CallerMetrics>, grpc: bool) -> Self {
        metrics.started();
        Self {
            metrics,
            grpc,
            start: Instant::now(),
            counted: false,
        }
    }

    /// Records the latency, and the status when it is known (`None`: it comes later).
    fn finish(&mut self, key: Option<StatusKey>) {
        self.counted = true;
        self.metrics.requests.observe(self.start.elapsed());
        if let Some(key) = key {
            self.metrics.requests.count(key);
        }
    }

    /// Counts a response head; returns the status still to come, for a gRPC response whose
    /// status is in its trailers.
    fn response(&mut self, status: StatusCode, headers: &http::HeaderMap) -> Option<PendingStatus> {
        let key = if !self.grpc {
            Some(StatusKey::http(status.as_u16()))
        } else if status != StatusCode::OK {
            Some(StatusKey::grpc(code_from_http(status)))
        } else {
            grpc_status_of(headers).map(StatusKey::grpc)
        };
        self.finish(key);
        key.is_none()
            .then(|| PendingStatus::new(self.metrics.requests.clone()))
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.counted {
            self.finish(Some(StatusKey::error(ErrorKind::Cancelled)));
        }
        self.metrics.finished();
    }
}

pin_project! {
    /// Response future of [`Metrics`].
    pub struct MetricsFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, B, E> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        let Some(mut record) = this.record.take() else {
            return Poll::Ready(out.map(|rsp| rsp.map(MetricsBody::untracked)));
        };
        Poll::Ready(match out {
            Ok(rsp) => {
                let pending = record.response(rsp.status(), rsp.headers());
                Ok(rsp.map(|inner| MetricsBody {
                    inner,
                    pending,
                    _record: Some(record),
                }))
            }
            Err(e) => {
                record.finish(Some(StatusKey::error(ErrorKind::Other)));
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A response body that keeps its request in flight until it is sent (or dropped), and
    /// counts a gRPC status that comes in its trailers.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        pending: Option<PendingStatus>,
        _record: Option<Record>,
    }
}

impl<B> MetricsBody<B> {
    fn untracked(inner: B) -> Self {
        Self {
            inner,
            pending: None,
            _record: None,
        }
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        if let Some(pending) = this.pending.as_ref() {
            let key = status_of_frame(&frame).or_else(|| {
                // The last data frame of a body that ends without the trailers gRPC requires
                // (hyper polls no further once the body says it has ended).
                inner
                    .is_end_stream()
                    .then_some(StatusKey::error(ErrorKind::Other))
            });
            if let Some(key) = key {
                pending.finish(key);
                *this.pending = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default> Default for MetricsBody<B> {
    fn default() -> Self {
        Self::untracked(B::default())
    }
}
