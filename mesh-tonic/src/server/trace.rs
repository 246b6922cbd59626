//! A tracing span per incoming gRPC call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

use mesh_core::{
    identity::PeerIdentity,
    trace_context::{TraceContext, sync_scope},
};
use mesh_hyper::server::{TraceBody, incoming_trace_context};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::status::{code_name, grpc_status_of};

/// Runs every call in a `grpc` span (`debug` level) with its method, the caller's identity and
/// the trace id, and ends it with an event saying how the call's head went (`grpc-status` when
/// the response is trailers-only, the time to the response head).
///
/// It also carries W3C trace context (like mesh-hyper's
/// [`TraceContextLayer`](mesh_hyper::server::TraceContextLayer)): the call's `traceparent` (or
/// a new trace) becomes the handler's current [`TraceContext`], so calls the handler makes
/// through a mesh channel continue the trace.
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
    type Response = http::Response<TraceBody<R>>;
    type Error = S::Error;
    type Future = TaskLocalFuture<TraceContext, TraceFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let ctx = incoming_trace_context(req.headers());
        req.extensions_mut().insert(ctx.clone());
        let span = tracing::debug_span!(
            "grpc",
            method = req.uri().path(),
            caller = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_id = tracing::field::Empty,
        );
        if span.is_disabled() {
            let fut = sync_scope(ctx.clone(), || self.inner.call(req));
            return ctx.clone().scope(TraceFuture {
                state: State::Off { fut },
                ctx: Some(ctx),
            });
        }
        if let Some(PeerIdentity(Some(id))) = req.extensions().get::<PeerIdentity>() {
            span.record("caller", id.as_str());
        }
        ctx.record_on(&span);
        let fut = {
            let _enter = span.enter();
            sync_scope(ctx.clone(), || self.inner.call(req))
        };
        ctx.clone().scope(TraceFuture {
            state: State::On {
                fut: fut.instrument(span),
                start: Instant::now(),
            },
            ctx: Some(ctx),
        })
    }
}

pin_project! {
    /// Response future of [`Trace`]; the response body is produced in the call's trace
    /// context too (a server stream whose items make mesh calls continues the trace).
    pub struct TraceFuture<F> {
        #[pin]
        state: State<F>,
        ctx: Option<TraceContext>,
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
    type Output = Result<http::Response<TraceBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.state.project() {
            StateProj::Off { fut } => ready!(fut.poll(cx)),
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
                out
            }
        };
        let ctx = this.ctx.take();
        Poll::Ready(out.map(|rsp| rsp.map(|body| TraceBody::new(body, ctx))))
    }
}
