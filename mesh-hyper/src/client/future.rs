//! The client's response future: polls the destination's stack inside the request's span and
//! records the request's status and latency when the client has telemetry.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use http::Response;
use hyper::body::Incoming;
use mesh_core::telemetry::{ErrorKind, PendingStatus, RequestMetrics, StatusKey};
use pin_project_lite::pin_project;

use super::{Dialect, RequestBody, router::RouteFuture};
use crate::Error;

/// The destination's stack behind one boxed type (see `router`): a layer is added there, not
/// in a hand-written type.
type StackFuture = RouteFuture;

pin_project! {
    /// Response future of [`MeshClient`](super::MeshClient).
    pub struct ResponseFuture<B: RequestBody, D: Dialect> {
        #[pin]
        state: State<B, D>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<B: RequestBody, D: Dialect> {
        Routed {
            #[pin] fut: StackFuture,
            span: Option<tracing::Span>,
            record: Option<Record<D>>,
        },
        Failed { error: Option<Error>, _body: std::marker::PhantomData<fn() -> B> },
    }
}

/// One request's entry in its destination's metrics. Dropped before the response (the caller
/// gave up), it counts as cancelled.
pub(super) struct Record<D: Dialect> {
    metrics: Option<Arc<RequestMetrics>>,
    dialect: D,
    start: Instant,
}

impl<D: Dialect> Record<D> {
    pub(super) fn start(metrics: &Arc<RequestMetrics>, dialect: &D) -> Self {
        Self {
            metrics: Some(metrics.clone()),
            dialect: dialect.clone(),
            start: Instant::now(),
        }
    }

    fn finish(mut self, result: &mut Result<Response<Incoming>, Error>) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        metrics.observe(self.start.elapsed());
        match result {
            Ok(rsp) => match self.dialect.telemetry_status(rsp) {
                Some(key) => metrics.count(key),
                // The status comes later (gRPC trailers): the response body finishes it.
                None => {
                    rsp.extensions_mut().insert(PendingStatus::new(metrics));
                }
            },
            Err(e) => metrics.count(StatusKey::error(e.telemetry_kind())),
        }
    }
}

impl<D: Dialect> Drop for Record<D> {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.observe(self.start.elapsed());
            m.count(StatusKey::error(ErrorKind::Cancelled));
        }
    }
}

impl<B: RequestBody, D: Dialect> ResponseFuture<B, D> {
    pub(super) fn routed(
        fut: StackFuture,
        span: Option<tracing::Span>,
        record: Option<Record<D>>,
    ) -> Self {
        Self {
            state: State::Routed { fut, span, record },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        Self {
            state: State::Failed {
                error: Some(error),
                _body: std::marker::PhantomData,
            },
        }
    }
}

impl<B: RequestBody, D: Dialect> Future for ResponseFuture<B, D> {
    type Output = Result<Response<Incoming>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Routed { fut, span, record } => {
                let mut result = match span {
                    // Polled inside the request's span only when tracing wants it.
                    Some(span) => {
                        let _enter = span.enter();
                        ready!(fut.poll(cx))
                    }
                    None => ready!(fut.poll(cx)),
                };
                if let Some(record) = record.take() {
                    record.finish(&mut result);
                }
                Poll::Ready(result)
            }
            StateProj::Failed { error, .. } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}
