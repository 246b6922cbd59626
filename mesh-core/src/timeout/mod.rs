//! Overall request timeout.
//!
//! [`Timeout`] gives every request a [`Deadline`] (`now + timeout`, or the deadline it already
//! carries if that is earlier), stores it in the request's extensions for the layers below and for
//! outgoing calls, and fails the request with [`TimedOut`] when it passes. The per-try timeout of
//! retries lives in [`retry`](crate::retry), which also reads this deadline: no retry is started
//! that could not finish before it.
//!
//! With no timeout configured the layer still honours a deadline the request already carries,
//! or the deadline of the incoming request the current task is handling
//! ([`Deadline::current`], set by the servers' deadline layers), and otherwise costs nothing. Like Istio and Linkerd, mesh
//! sets no timeout by default.
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::{ServiceName, timeout::{TimeoutLayer, TimedOut}};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let name: ServiceName = "slow:80".parse().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(name, Some(Duration::from_millis(10))))
//!     .service_fn(|_req: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, TimedOut>(())
//!     });
//! let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(err.to_string().contains("slow:80"));
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Layer;
use tower_service::Service;

use crate::{ServiceName, deadline::Deadline, shared_service::SharedService};

/// Which timeout fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The overall request timeout (or a deadline the request carried).
    Request,
    /// One attempt's timeout (retries).
    PerTry,
}

/// A request (or one attempt of it) was not answered in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TimedOut {
    /// The service.
    pub service: ServiceName,
    /// Which timeout.
    pub kind: TimeoutKind,
    /// How long it had.
    pub after: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            TimeoutKind::Request => "request",
            TimeoutKind::PerTry => "attempt",
        };
        write!(
            f,
            "{what} to service {:?} timed out after {}",
            self.service.as_str(),
            crate::duration::format(self.after)
        )
    }
}

/// Applies [`Timeout`].
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    service: ServiceName,
    timeout: Option<Duration>,
}

impl TimeoutLayer {
    /// Requests to `service` fail after `timeout` (`None`: only a deadline they carry applies).
    pub fn new(service: ServiceName, timeout: Option<Duration>) -> Self {
        Self { service, timeout }
    }
}

impl TimeoutLayer {
    /// Sets `req`'s deadline and bounds the future `call` makes of it: what [`Timeout`] does,
    /// for a caller that chooses the inner service per request.
    pub fn wrap<B, F>(
        &self,
        mut req: http::Request<B>,
        call: impl FnOnce(http::Request<B>) -> F,
    ) -> ResponseFuture<F> {
        let (sleep, error) = arm(&self.service, self.timeout, &mut req);
        ResponseFuture {
            inner: call(req),
            sleep,
            error,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            service: self.service.clone(),
            timeout: self.timeout,
        }
    }
}

/// The timeout service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    service: ServiceName,
    timeout: Option<Duration>,
}

impl<S, B> Service<http::Request<B>> for Timeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: From<TimedOut>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let (sleep, error) = self.arm(&mut req);
        ResponseFuture {
            inner: self.inner.call(req),
            sleep,
            error,
        }
    }
}

impl<S> Timeout<S> {
    fn arm<B>(&self, req: &mut http::Request<B>) -> (Option<Pin<Box<Sleep>>>, Option<TimedOut>) {
        arm(&self.service, self.timeout, req)
    }
}

/// Sets the request's deadline; returns the timer and the error to give when it fires.
fn arm<B>(
    service: &ServiceName,
    timeout: Option<Duration>,
    req: &mut http::Request<B>,
) -> (Option<Pin<Box<Sleep>>>, Option<TimedOut>) {
    {
        if Deadline::of(req).is_none() {
            // A call made while handling an incoming request inherits its deadline.
            if let Some(inherited) = Deadline::current() {
                inherited.apply(req);
            }
        }
        let deadline = match timeout {
            Some(t) => {
                let d = Deadline::after(t).apply(req);
                Some((d, t.min(d.remaining())))
            }
            None => Deadline::of(req).map(|d| (d, d.remaining())),
        };
        let sleep = deadline.map(|(d, _)| Box::pin(tokio::time::sleep_until(d.instant().into())));
        let error = deadline.map(|(_, after)| TimedOut {
            service: service.clone(),
            kind: TimeoutKind::Request,
            after,
        });
        (sleep, error)
    }
}

impl<S, B> SharedService<http::Request<B>> for Timeout<S>
where
    S: SharedService<http::Request<B>>,
    S::Error: From<TimedOut>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn call_shared(&self, mut req: http::Request<B>) -> Self::Future {
        let (sleep, error) = self.arm(&mut req);
        ResponseFuture {
            inner: self.inner.call_shared(req),
            sleep,
            error,
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Boxed: most requests have no timeout, and the future stays small to move.
        sleep: Option<Pin<Box<Sleep>>>,
        error: Option<TimedOut>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: From<TimedOut>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if let Some(sleep) = this.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                let err = this
                    .error
                    .take()
                    .expect("timeout error present with a sleep");
                tracing::debug!(service = %err.service, after = ?err.after, "request timed out");
                return Poll::Ready(Err(err.into()));
            }
        }
        Poll::Pending
    }
}
