//! W3C trace context for incoming requests, handed to the calls the handler makes.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use mesh_core::trace_context::{TRACEPARENT, TRACESTATE, TraceContext, sync_scope};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::Layer;
use tower_service::Service;
use tracing::{Instrument, instrument::Instrumented};

/// Reads `traceparent` / `tracestate` from each incoming request (or starts a new trace when
/// there is none, or it is malformed), and runs the handler with this hop's [`TraceContext`]
/// as the task's current one: every [`MeshClient`](crate::MeshClient) request made while
/// handling it carries the same trace id with this hop as parent, with no application code.
/// The response body is produced in the same context (a streaming body that makes mesh calls
/// continues the trace). The context is also in the request's extensions, and the handler runs
/// in a `debug` span `inbound{trace_id, span_id, parent_id}`; the client's `mesh` span records
/// the `span_id` it sends, so the two link up in logs.
///
/// ```
/// use mesh_hyper::server::TraceContextLayer;
/// use tower::ServiceBuilder;
///
/// let svc = ServiceBuilder::new()
///     .layer(TraceContextLayer::new())
///     .service_fn(|_req: http::Request<String>| async {
///         // MeshClient requests sent from here continue the caller's trace.
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # let _ = svc;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContextLayer;

impl TraceContextLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = PropagateTrace<S>;
    fn layer(&self, inner: S) -> PropagateTrace<S> {
        PropagateTrace { inner }
    }
}

/// The service of [`TraceContextLayer`].
#[derive(Clone, Debug)]
pub struct PropagateTrace<S> {
    inner: S,
}

/// The `traceparent` header, parsed once.
pub static TRACEPARENT_HEADER: HeaderName = HeaderName::from_static(TRACEPARENT);
/// The `tracestate` header, parsed once.
pub static TRACESTATE_HEADER: HeaderName = HeaderName::from_static(TRACESTATE);

/// This hop's trace context for an incoming request with these headers. Several
/// `traceparent` headers make the context invalid (a new trace starts); several `tracestate`
/// headers are one list, joined with commas (W3C Trace Context §3.3.1).
pub fn incoming_trace_context(headers: &http::HeaderMap) -> TraceContext {
    let mut parents = headers.get_all(&TRACEPARENT_HEADER).iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(v), None) => v.to_str().ok(),
        (None, _) => None,
        (Some(_), Some(_)) => Some("several traceparent headers"),
    };
    let mut states = headers
        .get_all(&TRACESTATE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let joined;
    let state = match (states.next(), states.next()) {
        (None, _) => None,
        (Some(one), None) => Some(one),
        (Some(a), Some(b)) => {
            joined = [a, b]
                .into_iter()
                .chain(states)
                .collect::<Vec<_>>()
                .join(",");
            Some(joined.as_str())
        }
    };
    TraceContext::for_incoming(parent, state)
}

impl<S, B, R> Service<http::Request<B>> for PropagateTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<TraceBody<R>>;
    type Error = S::Error;
    type Future = PropagateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let ctx = incoming_trace_context(req.headers());
        let span = inbound_span(&ctx);
        req.extensions_mut().insert(ctx.clone());
        // `call` may start work eagerly: it runs in the context too.
        let fut = sync_scope(ctx.clone(), || self.inner.call(req));
        PropagateFuture {
            inner: ctx.clone().scope(fut.instrument(span)),
            ctx: Some(ctx),
        }
    }
}

/// The `inbound{trace_id, span_id, parent_id}` span of one request (`debug`).
pub(crate) fn inbound_span(ctx: &TraceContext) -> tracing::Span {
    let span = tracing::debug_span!(
        "inbound",
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
    );
    if !span.is_disabled() {
        ctx.record_on(&span);
    }
    span
}

pin_project! {
    /// Response future of [`PropagateTrace`]: the handler in the request's context, then its
    /// body wrapped so that producing it stays in that context.
    pub struct PropagateFuture<F> {
        #[pin]
        inner: TaskLocalFuture<TraceContext, Instrumented<F>>,
        ctx: Option<TraceContext>,
    }
}

impl<F, R, E> Future for PropagateFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<TraceBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        let ctx = this.ctx.take();
        Poll::Ready(out.map(|rsp| rsp.map(|body| TraceBody::new(body, ctx))))
    }
}

pin_project! {
    /// A response body produced in its request's trace context: a streaming handler whose
    /// body makes mesh calls (a gRPC server stream, a chunked HTTP response) continues the
    /// trace too.
    pub struct TraceBody<B> {
        #[pin]
        inner: B,
        ctx: Option<TraceContext>,
    }
}

impl<B> TraceBody<B> {
    /// `inner`, polled with `ctx` as the current context (if any).
    pub fn new(inner: B, ctx: Option<TraceContext>) -> Self {
        Self { inner, ctx }
    }
}

impl<B: Body> Body for TraceBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.ctx {
            Some(ctx) => sync_scope(ctx.clone(), || this.inner.poll_frame(cx)),
            None => this.inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Default> Default for TraceBody<B> {
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}
