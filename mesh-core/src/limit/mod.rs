//! Per-destination limits: concurrency, a bounded queue, and a rate limit — load shedding.
//!
//! [`Limit`] admits a request to the layers below only if the destination is under its
//! limits; otherwise it fails it **at once** with a typed error, never queueing without bound:
//!
//! - at most `maxConcurrentRequests` in flight (default 1024, Envoy's circuit-breaker
//!   `max_requests` default);
//! - when they are all taken, at most `maxPendingRequests` wait for one (default 1024, Envoy's
//!   `max_pending_requests`), each no longer than its [`Deadline`]; the next one is shed with
//!   [`Overloaded`];
//! - with `rateLimit`, at most `requestsPerSecond` (bursts of `burst`) leave for the destination
//!   (governor's GCRA, never blocking); the rest fail with [`RateLimited`] saying when to retry.
//!
//! Shed requests are `debug` events and counted in [`LimitCounts`]. The service is always
//! ready (`poll_ready` never waits): shedding happens in `call`, as tower's `LoadShed` does, so
//! that callers see a fast error rather than an unbounded wait for readiness.
//!
//! ```
//! use mesh_core::limit::{LimitLayer, LimitPolicy, Overloaded, RateLimited};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! #[derive(Debug)]
//! enum Error { Overloaded(Overloaded), RateLimited(RateLimited) }
//! impl From<Overloaded> for Error { fn from(e: Overloaded) -> Self { Error::Overloaded(e) } }
//! impl From<RateLimited> for Error { fn from(e: RateLimited) -> Self { Error::RateLimited(e) } }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = LimitPolicy { max_concurrent_requests: Some(1), max_pending_requests: 0, ..Default::default() };
//! let svc = ServiceBuilder::new()
//!     .layer(LimitLayer::new("busy:80".parse().unwrap(), &policy).unwrap())
//!     .service_fn(|_req: http::Request<()>| async { std::future::pending::<Result<(), Error>>().await });
//! let _first = tokio::spawn(svc.clone().oneshot(http::Request::new(())));
//! tokio::task::yield_now().await;
//! let second = svc.oneshot(http::Request::new(())).await;
//! assert!(matches!(second, Err(Error::Overloaded(_))));
//! # }
//! ```

use std::{
    fmt,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::Duration,
};

use governor::{
    DefaultDirectRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tower::Layer;
use tower_service::Service;

use crate::{ServiceName, deadline::Deadline, policy_error::PolicyError};

/// Requests in flight per destination: 1024, Envoy's `max_requests` default.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 1024;
/// Requests waiting for a slot: 1024, Envoy's `max_pending_requests` default.
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;

/// Limits of one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitPolicy {
    /// Requests in flight at once (`None`: unlimited).
    pub max_concurrent_requests: Option<u32>,
    /// Requests allowed to wait for a slot when all are taken.
    pub max_pending_requests: u32,
    /// Requests per second leaving for the destination (`None`: unlimited).
    pub rate_limit: Option<RateLimit>,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        Self {
            max_concurrent_requests: Some(DEFAULT_MAX_CONCURRENT_REQUESTS),
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            rate_limit: None,
        }
    }
}

impl LimitPolicy {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_concurrent_requests == Some(0) {
            return Err(PolicyError::new(
                "maxConcurrentRequests",
                "must be at least 1 (omit it for no limit)",
            ));
        }
        if let Some(r) = &self.rate_limit {
            r.validate().map_err(|e| e.within("rateLimit"))?;
        }
        Ok(())
    }
}

/// A token-bucket rate: `requestsPerSecond` on average, bursts of up to `burst` (default: one
/// second's worth).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Largest burst.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.requests_per_second == 0 {
            return Err(PolicyError::new("requestsPerSecond", "must be at least 1"));
        }
        if self.burst == Some(0) {
            return Err(PolicyError::new("burst", "must be at least 1"));
        }
        Ok(())
    }

    /// The governor quota.
    pub fn quota(&self) -> Result<Quota, PolicyError> {
        self.validate()?;
        let rps = NonZeroU32::new(self.requests_per_second).expect("validated");
        let burst =
            NonZeroU32::new(self.burst.unwrap_or(self.requests_per_second)).expect("validated");
        Ok(Quota::per_second(rps).allow_burst(burst))
    }

    /// A limiter for this rate.
    pub fn limiter(&self) -> Result<DefaultDirectRateLimiter, PolicyError> {
        Ok(RateLimiter::direct(self.quota()?))
    }
}

/// The destination is at its concurrency limit and its queue is full: the request was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {:?} is overloaded: {in_flight} requests in flight (limit {max_concurrent}) and {max_pending} waiting (limit); request shed", service.as_str())]
pub struct Overloaded {
    /// The service.
    pub service: ServiceName,
    /// Requests in flight when it was shed.
    pub in_flight: u32,
    /// The concurrency limit.
    pub max_concurrent: u32,
    /// The queue limit.
    pub max_pending: u32,
}

/// The destination's rate limit was reached: the request was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit of service {:?} reached ({requests_per_second}/s); retry after {}", service.as_str(), crate::duration::format(*retry_after))]
pub struct RateLimited {
    /// The service.
    pub service: ServiceName,
    /// The limit.
    pub requests_per_second: u32,
    /// When the next request would be admitted.
    pub retry_after: Duration,
}

/// Counters of one destination's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LimitCounts {
    /// Requests shed with [`Overloaded`].
    pub shed: u64,
    /// Requests refused with [`RateLimited`].
    pub rate_limited: u64,
    /// Requests that waited for a slot.
    pub queued: u64,
}

struct Shared {
    service: ServiceName,
    /// Requests admitted and not finished (only counted with a concurrency limit).
    in_flight: AtomicUsize,
    /// Woken when a slot frees up, for queued requests.
    freed: Notify,
    limited: bool,
    max_concurrent: u32,
    max_pending: u32,
    pending: AtomicUsize,
    rate: Option<(DefaultDirectRateLimiter, u32)>,
    shed: AtomicU64,
    rate_limited: AtomicU64,
    queued: AtomicU64,
}

/// Applies [`Limit`].
#[derive(Clone)]
pub struct LimitLayer {
    shared: Arc<Shared>,
}

impl LimitLayer {
    /// Limits for requests to `service`.
    pub fn new(service: ServiceName, policy: &LimitPolicy) -> Result<Self, PolicyError> {
        policy.validate()?;
        let rate = match &policy.rate_limit {
            Some(r) => Some((r.limiter()?, r.requests_per_second)),
            None => None,
        };
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                in_flight: AtomicUsize::new(0),
                freed: Notify::new(),
                limited: policy.max_concurrent_requests.is_some(),
                max_concurrent: policy.max_concurrent_requests.unwrap_or(u32::MAX),
                max_pending: policy.max_pending_requests,
                pending: AtomicUsize::new(0),
                rate,
                shed: AtomicU64::new(0),
                rate_limited: AtomicU64::new(0),
                queued: AtomicU64::new(0),
            }),
        })
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The limit service; see the [module docs](self).
#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Limit<S> {
    /// The counters so far.
    pub fn counts(&self) -> LimitCounts {
        LimitCounts {
            shed: self.shared.shed.load(Relaxed),
            rate_limited: self.shared.rate_limited.load(Relaxed),
            queued: self.shared.queued.load(Relaxed),
        }
    }

    /// Requests in flight now (counted only with a concurrency limit).
    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Relaxed) as u32
    }
}

impl<S: fmt::Debug> fmt::Debug for Limit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("service", &self.shared.service)
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("max_pending", &self.shared.max_pending)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, B> Service<http::Request<B>> for Limit<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: From<Overloaded> + From<RateLimited> + Send + 'static,
    S::Response: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = &self.shared;
        if let Some((limiter, rps)) = &shared.rate {
            if let Err(not_until) = limiter.check() {
                shared.rate_limited.fetch_add(1, Relaxed);
                let retry_after = not_until.wait_time_from(DefaultClock::default().now());
                tracing::debug!(service = %shared.service, ?retry_after, "request rate-limited");
                return ResponseFuture::failed(
                    RateLimited {
                        service: shared.service.clone(),
                        requests_per_second: *rps,
                        retry_after,
                    }
                    .into(),
                );
            }
        }
        if !shared.limited {
            return ResponseFuture::admitted(self.inner.call(req), None);
        }
        if let Some(slot) = Slot::try_take(shared) {
            return ResponseFuture::admitted(self.inner.call(req), Some(slot));
        }
        // All slots taken: wait in the bounded queue, or shed.
        if shared.pending.fetch_add(1, Relaxed) >= shared.max_pending as usize {
            shared.pending.fetch_sub(1, Relaxed);
            let err = self.overloaded();
            shed(shared, "queue full");
            return ResponseFuture::failed(err.into());
        }
        shared.queued.fetch_add(1, Relaxed);
        let shared = shared.clone();
        // The inner service was made ready for this call: the queued request takes it (and its
        // readiness, e.g. a permit of a `ConcurrencyLimit` below), a fresh clone stays for the
        // next `poll_ready`. tower's idiom for a call that finishes later.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let overloaded = self.overloaded();
        ResponseFuture::waiting(Box::pin(async move {
            let deadline = Deadline::of(&req);
            let slot = loop {
                let freed = shared.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if let Some(slot) = Slot::try_take(&shared) {
                    break Some(slot);
                }
                match deadline {
                    Some(d) => {
                        if tokio::time::timeout_at(d.instant().into(), freed)
                            .await
                            .is_err()
                        {
                            break None;
                        }
                    }
                    None => freed.await,
                }
            };
            shared.pending.fetch_sub(1, Relaxed);
            let Some(slot) = slot else {
                shed(&shared, "deadline passed while queued");
                return Err(overloaded.into());
            };
            let rsp = inner.call(req).await;
            drop(slot);
            rsp
        }))
    }
}

/// One admitted request: a concurrency slot, given back on drop (waking a queued request).
pub struct Slot(Arc<Shared>);

impl Slot {
    fn try_take(shared: &Arc<Shared>) -> Option<Self> {
        let n = shared.in_flight.fetch_add(1, Relaxed);
        if n < shared.max_concurrent as usize {
            Some(Self(shared.clone()))
        } else {
            shared.in_flight.fetch_sub(1, Relaxed);
            None
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        if self.0.pending.load(Relaxed) > 0 {
            self.0.freed.notify_one();
        }
    }
}

fn shed(s: &Shared, why: &'static str) {
    s.shed.fetch_add(1, Relaxed);
    tracing::debug!(service = %s.service, max_concurrent = s.max_concurrent,
        max_pending = s.max_pending, why, "request shed: destination overloaded");
}

impl<S> Limit<S> {
    fn overloaded(&self) -> Overloaded {
        let s = &self.shared;
        Overloaded {
            service: s.service.clone(),
            in_flight: self.in_flight(),
            max_concurrent: s.max_concurrent,
            max_pending: s.max_pending,
        }
    }
}

pin_project! {
    /// Response future of [`Limit`].
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        state: State<F, T, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T, E> {
        Admitted { #[pin] fut: F, permit: Option<Slot> },
        Waiting { fut: Pin<Box<dyn Future<Output = Result<T, E>> + Send>> },
        Failed { error: Option<E> },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    fn admitted(fut: F, permit: Option<Slot>) -> Self {
        Self {
            state: State::Admitted { fut, permit },
        }
    }
    fn waiting(fut: Pin<Box<dyn Future<Output = Result<T, E>> + Send>>) -> Self {
        Self {
            state: State::Waiting { fut },
        }
    }
    fn failed(error: E) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { fut, permit } => {
                let out = std::task::ready!(fut.poll(cx));
                permit.take();
                Poll::Ready(out)
            }
            StateProj::Waiting { fut } => fut.as_mut().poll(cx),
            StateProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}
