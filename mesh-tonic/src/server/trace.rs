//! A tracing span per incoming gRPC call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use mesh_core::identity::PeerIdentity;
use pin_project_lite::pin_project;
use tower::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::status::{code_name, grpc_status_of};

/// Runs every call in a `grpc` span (`debug` level) with its method and the caller's identity,
/// and ends it with an event saying how the call's head went (`grpc-status` when the response is
/// trailers-only, the time to the response head). Costs nothing when the span is disabled.
///
/// ```
/// use mesh_tonic::server::TraceLayer;
/// let layer = TraceLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct Trace<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for Trace<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = tracing::debug_span!(
            "grpc",
            method = req.uri().path(),
            caller = tracing::field::Empty
        );
        if span.is_disabled() {
            return TraceFuture {
                state: State::Off {
                    fut: self.inner.call(req),
                },
            };
        }
        if let Some(PeerIdentity(Some(id))) = req.extensions().get::<PeerIdentity>() {
            span.record("caller", id.as_str());
        }
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        TraceFuture {
            state: State::On {
                fut: fut.instrument(span),
                start: Instant::now(),
            },
        }
    }
}

pin_project! {
    /// Response future of [`Trace`].
    pub struct TraceFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        On { #[pin] fut: tracing::instrument::Instrumented<F>, start: Instant },
        Off { #[pin] fut: F },
    }
}

impl<F, R, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
    E: std::fmt::Display,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project().state.project() {
            StateProj::Off { fut } => fut.poll(cx),
            StateProj::On { mut fut, start } => {
                let out = ready!(fut.as_mut().poll(cx));
                let _enter = fut.span().enter();
                let elapsed = start.elapsed();
                match &out {
                    Ok(rsp) => match grpc_status_of(rsp.headers()) {
                        Some(code) if code != 0 => {
                            tracing::debug!(?elapsed, code = code_name(code),
                            message = ?rsp.headers().get("grpc-message"), "call failed")
                        }
                        _ => tracing::debug!(
                            ?elapsed,
                            http_status = rsp.status().as_u16(),
                            "call answered"
                        ),
                    },
                    Err(e) => tracing::debug!(?elapsed, error = %e, "call errored"),
                }
                Poll::Ready(out)
            }
        }
    }
}
