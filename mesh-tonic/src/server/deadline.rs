//! Deadline propagation on the server side.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use mesh_core::deadline::Deadline as CallDeadline;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tower::Layer;
use tower_service::Service;

use crate::grpc_timeout;

/// Reads an incoming call's `grpc-timeout` and makes it the call's deadline: stored in the
/// request's extensions (as [`mesh_core::deadline::Deadline`]) and set as the task's current
/// deadline while the handler runs, so every call the handler makes through the mesh
/// ([`MeshChannel`](crate::MeshChannel) or mesh-hyper's client) inherits the time left, with no
/// application code. The handler's own spawned tasks are outside that scope (see
/// [`mesh_core::deadline`]). Enforcing the deadline on the server stays tonic's job (its server
/// already does).
///
/// ```
/// use mesh_tonic::server::DeadlineLayer;
/// let layer = DeadlineLayer::new();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl DeadlineLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get(&grpc_timeout::GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout::decode);
        match timeout {
            Some(t) => {
                let deadline = CallDeadline::after(t).apply(&mut req);
                tracing::trace!(timeout = ?t, "call has a deadline");
                DeadlineFuture {
                    state: State::Scoped {
                        fut: deadline.scope(self.inner.call(req)),
                    },
                }
            }
            None => DeadlineFuture {
                state: State::Plain {
                    fut: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`Deadline`].
    pub struct DeadlineFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Scoped { #[pin] fut: TaskLocalFuture<CallDeadline, F> },
        Plain { #[pin] fut: F },
    }
}

impl<F: Future> Future for DeadlineFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project().state.project() {
            StateProj::Scoped { fut } => fut.poll(cx),
            StateProj::Plain { fut } => fut.poll(cx),
        }
    }
}
