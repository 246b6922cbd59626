//! Retries with a budget, backoff, per-try timeouts, and hedging.
//!
//! [`Retry`] sends a request and, when the result is a retryable failure, sends it again — to
//! another endpoint when the balancer has one ([`TriedEndpoints`]). What is retried
//! ([`RetryOn`]):
//!
//! | failure | retried for |
//! |---|---|
//! | connect failure, HTTP/2 `REFUSED_STREAM` / `GOAWAY` before processing | every method: the server never saw the request |
//! | a status in `retryOn.statuses` (default 502, 503, 504) | idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), others only with `retryNonIdempotent` |
//! | the per-try timeout | idempotent methods, likewise |
//! | the connection closed or reset before the response head (`reset`) | idempotent methods, likewise |
//! | anything else (a failure once the response streams, local shedding, no endpoints) | never |
//!
//! Each retry must also find: the body still replayable (bodies up to `maxReplayBytes`, 64 KiB
//! by default, are recorded while sent — see [`ReplayBody`]; bigger ones are sent once), time
//! left before the request's [`Deadline`], a free retry slot
//! (`maxConcurrentRetries`) and a token in the **retry budget** ([`RetryBudget`]), which lets
//! retries add `ratio` (20 %) of the requests of the last `ttl` (10 s) plus `minPerSecond` (10)
//! per second, like Linkerd and Finagle. When any of these is missing, the failure of the last
//! attempt is returned as it is (and counted). Between attempts the retry waits an exponential
//! backoff with full jitter. A response is retried only on its status, before anything of it is
//! handed to the caller: never once it streams.
//!
//! **Hedging** (off by default): with [`HedgePolicy`], an idempotent request whose body is
//! complete gets a second attempt, to another endpoint, when the first has not answered within
//! the given percentile of recent latencies; the first answer wins and the other is cancelled.
//! Each hedge spends a budget token.
//!
//! Every retry, hedge, budget exhaustion and refusal is a `debug` event with the service, the
//! attempt and the reason, and is counted in [`RetryStats`].
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use mesh_core::{
//!     classify::{Classify, FailureKind, ResponseClass},
//!     retry::{RetryLayer, RetryPolicy},
//!     timeout::TimedOut,
//! };
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! // A classifier for plain status codes.
//! #[derive(Clone)]
//! struct Codes;
//! impl Classify<u16, TimedOut> for Codes {
//!     fn classify(&self, r: Result<&u16, &TimedOut>) -> ResponseClass {
//!         match r {
//!             Ok(s) if *s >= 500 => ResponseClass::Failure(FailureKind::Status(*s)),
//!             Ok(_) => ResponseClass::Success,
//!             Err(_) => ResponseClass::Failure(FailureKind::Timeout),
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let c = calls.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new("flaky:80".parse().unwrap(), RetryPolicy::default(), Codes).unwrap())
//!     .service_fn(move |_req: http::Request<_>| {
//!         let n = c.fetch_add(1, Ordering::SeqCst);
//!         async move { Ok::<u16, TimedOut>(if n == 0 { 503 } else { 200 }) }
//!     });
//! let req = http::Request::get("/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap(), 200);
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```

mod attempts;
mod budget;
mod ctx;
mod future;
mod latency;
mod policy;
mod replay;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::{Either, select};
use pin_project_lite::pin_project;
use serde::Serialize;
use tokio::time::Sleep;
use tower::{Layer, ServiceExt};
use tower_service::Service;

pub use self::{
    budget::RetryBudget,
    future::ResponseFuture,
    policy::{
        Backoff, BudgetPolicy, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX,
        DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_TTL,
        DEFAULT_MAX_CONCURRENT_RETRIES, DEFAULT_MAX_REPLAY_BYTES, DEFAULT_RETRIES,
        DEFAULT_RETRY_STATUSES, HedgePolicy, RetryOn, RetryPolicy,
    },
    replay::{ReplayBody, ReplayError},
};
use self::{future::start, latency::LatencyTracker};
use crate::{
    ServiceName,
    balance::TriedEndpoints,
    classify::{Classify, FailureKind, ResponseClass},
    deadline::Deadline,
    policy_error::PolicyError,
    shared_service::SharedService,
    timeout::{TimedOut, TimeoutKind},
};

/// Counters of one destination's retry layer.
#[derive(Debug, Default)]
pub struct RetryStats {
    requests: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    budget_exhausted: AtomicU64,
    not_replayable: AtomicU64,
    retry_overflow: AtomicU64,
}

/// A snapshot of [`RetryStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetryCounts {
    /// Requests seen.
    pub requests: u64,
    /// Retries sent.
    pub retries: u64,
    /// Hedges sent.
    pub hedges: u64,
    /// Retries (or hedges) not sent because the budget was empty.
    pub budget_exhausted: u64,
    /// Retries not sent because the body could not be replayed.
    pub not_replayable: u64,
    /// Retries not sent because `maxConcurrentRetries` were in flight.
    pub retry_overflow: u64,
}

impl RetryCounts {
    /// Attempts sent (first tries + retries + hedges).
    pub fn attempts(&self) -> u64 {
        self.requests + self.retries + self.hedges
    }
}

impl RetryStats {
    /// The counts so far.
    pub fn snapshot(&self) -> RetryCounts {
        RetryCounts {
            requests: self.requests.load(Relaxed),
            retries: self.retries.load(Relaxed),
            hedges: self.hedges.load(Relaxed),
            budget_exhausted: self.budget_exhausted.load(Relaxed),
            not_replayable: self.not_replayable.load(Relaxed),
            retry_overflow: self.retry_overflow.load(Relaxed),
        }
    }
}

/// What every route to one destination shares: the retry budget, the bound on retries in
/// flight, and the counters. One per destination (see [`BudgetPolicy`]); each route's
/// [`RetryLayer`] holds it.
#[derive(Debug)]
pub struct RetryShare {
    budget: RetryBudget,
    max_concurrent: u32,
    in_flight: AtomicUsize,
    stats: RetryStats,
}

impl RetryShare {
    /// A budget and counters for one destination.
    pub fn new(policy: &BudgetPolicy) -> Result<Arc<Self>, PolicyError> {
        policy.validate()?;
        Ok(Arc::new(Self {
            budget: RetryBudget::new(policy.ttl, policy.min_per_second, policy.ratio),
            max_concurrent: policy.max_concurrent,
            in_flight: AtomicUsize::new(0),
            stats: RetryStats::default(),
        }))
    }

    /// The destination's counters (every route's retries).
    pub fn stats(&self) -> RetryCounts {
        self.stats.snapshot()
    }

    /// Retries the budget allows right now.
    pub fn budget_available(&self) -> f64 {
        self.budget.available()
    }
}

struct Shared<C> {
    service: ServiceName,
    policy: RetryPolicy,
    share: Arc<RetryShare>,
    classifier: C,
    latency: Option<LatencyTracker>,
}

/// Applies [`Retry`].
pub struct RetryLayer<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for RetryLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> RetryLayer<C> {
    /// Retries requests to `service` by `policy`, with a default budget of its own;
    /// `classifier` tells which results failed.
    pub fn new(
        service: ServiceName,
        policy: RetryPolicy,
        classifier: C,
    ) -> Result<Self, PolicyError> {
        let share = RetryShare::new(&BudgetPolicy::default())?;
        Self::with_share(service, policy, classifier, share)
    }

    /// Retries requests of one route by `policy`, spending the destination's shared budget.
    pub fn with_share(
        service: ServiceName,
        policy: RetryPolicy,
        classifier: C,
        share: Arc<RetryShare>,
    ) -> Result<Self, PolicyError> {
        policy.validate()?;
        let latency = policy.hedge.as_ref().map(|h| LatencyTracker::new(h.window));
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                policy,
                share,
                classifier,
                latency,
            }),
        })
    }

    /// The counters of the destination (shared by its routes).
    pub fn stats(&self) -> RetryCounts {
        self.shared.share.stats.snapshot()
    }

    /// Retries the budget allows right now.
    pub fn budget_available(&self) -> f64 {
        self.shared.share.budget.available()
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// Sends `req` (whose body is already wrapped for replay, e.g. because the caller also
    /// mirrors it) through `svc` under this policy: what [`Retry`] does, for a caller that
    /// picks the inner service per request.
    pub fn call<S, B>(&self, svc: S, req: http::Request<ReplayBody<B>>) -> ResponseFuture<S, B, C>
    where
        S: Service<http::Request<ReplayBody<B>>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Response: Send + 'static,
        S::Error: From<TimedOut> + Send + 'static,
        C: Classify<S::Response, S::Error> + Send + Sync + 'static,
        B: http_body::Body + Send + 'static,
    {
        future::start_wrapped(&self.shared, svc, req)
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;
    fn layer(&self, inner: S) -> Retry<S, C> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The retry service; see the [module docs](self).
pub struct Retry<S, C> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Retry<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> Retry<S, C> {
    /// This destination's counters.
    pub fn stats(&self) -> RetryCounts {
        self.shared.share.stats.snapshot()
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Retry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("service", &self.shared.service)
            .field("policy", &self.shared.policy)
            .field("inner", &self.inner)
            .finish()
    }
}

/// Whether a method is idempotent (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

type BoxResult<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, C, B> Service<http::Request<B>> for Retry<S, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: From<TimedOut> + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The inner service was made ready for this call; keep a fresh clone for next time.
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        start(&self.shared, svc, req)
    }
}

impl<S, C, B> SharedService<http::Request<B>> for Retry<S, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: From<TimedOut> + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, C>;

    /// The inner service is cloned once per request (a retry needs its own handle on it).
    fn call_shared(&self, req: http::Request<B>) -> Self::Future {
        start(&self.shared, self.inner.clone(), req)
    }
}

#[cfg(test)]
mod tests;
