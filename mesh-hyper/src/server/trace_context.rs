//! W3C trace context for incoming requests, handed to the calls the handler makes.

use std::task::{Context, Poll};

use http::HeaderName;
use mesh_core::trace_context::{TRACEPARENT, TRACESTATE, TraceContext, sync_scope};
use tokio::task::futures::TaskLocalFuture;
use tower::Layer;
use tower_service::Service;
use tracing::{Instrument, instrument::Instrumented};

/// Reads `traceparent` / `tracestate` from each incoming request (or starts a new trace when
/// there is none, or it is malformed), and runs the handler with this hop's [`TraceContext`]
/// as the task's current one: every [`MeshClient`](crate::MeshClient) request made while
/// handling it carries the same trace id with this hop as parent, with no application code.
/// The context is also in the request's extensions, and the handler runs in a `debug` span
/// `inbound{trace_id, span_id}`.
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

/// This hop's trace context for an incoming request with these headers.
pub fn incoming_trace_context(headers: &http::HeaderMap) -> TraceContext {
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    TraceContext::for_incoming(get(&TRACEPARENT_HEADER), get(&TRACESTATE_HEADER))
}

impl<S, B> Service<http::Request<B>> for PropagateTrace<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<TraceContext, Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let ctx = incoming_trace_context(req.headers());
        let span = tracing::debug_span!(
            "inbound",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty
        );
        if !span.is_disabled() {
            span.record("trace_id", tracing::field::display(ctx.trace_id()));
            span.record("span_id", tracing::field::display(ctx.span_id()));
        }
        req.extensions_mut().insert(ctx.clone());
        // `call` may start work eagerly: it runs in the context too.
        let fut = sync_scope(ctx.clone(), || self.inner.call(req));
        ctx.scope(fut.instrument(span))
    }
}
