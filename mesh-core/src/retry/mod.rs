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
//! | anything else (resets after the request was sent, local shedding, no endpoints) | never |
//!
//! Each retry must also find: the body still replayable (bodies up to `maxReplayBytes`, 64 KiB
//! by default, are recorded while sent — see [`ReplayBody`]; bigger ones are sent once), time
//! left before the request's [`Deadline`](crate::deadline::Deadline), a free retry slot
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

mod budget;
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

use self::latency::LatencyTracker;
pub use self::{
    budget::RetryBudget,
    policy::{
        Backoff, BudgetPolicy, DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX,
        DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_TTL,
        DEFAULT_MAX_CONCURRENT_RETRIES, DEFAULT_MAX_REPLAY_BYTES, DEFAULT_RETRIES,
        DEFAULT_RETRY_STATUSES, HedgePolicy, RetryOn, RetryPolicy,
    },
    replay::{ReplayBody, ReplayError},
};
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

struct Shared<C> {
    service: ServiceName,
    policy: RetryPolicy,
    budget: RetryBudget,
    classifier: C,
    stats: RetryStats,
    retries_in_flight: AtomicUsize,
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
    /// Retries requests to `service` by `policy`; `classifier` tells which results failed.
    pub fn new(
        service: ServiceName,
        policy: RetryPolicy,
        classifier: C,
    ) -> Result<Self, PolicyError> {
        policy.validate()?;
        let budget = RetryBudget::new(
            policy.budget.ttl,
            policy.budget.min_per_second,
            policy.budget.ratio,
        );
        let latency = policy.hedge.as_ref().map(|h| LatencyTracker::new(h.window));
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                policy,
                budget,
                classifier,
                stats: RetryStats::default(),
                retries_in_flight: AtomicUsize::new(0),
                latency,
            }),
        })
    }

    /// The counters of every service this layer built.
    pub fn stats(&self) -> RetryCounts {
        self.shared.stats.snapshot()
    }

    /// Retries the budget allows right now.
    pub fn budget_available(&self) -> f64 {
        self.shared.budget.available()
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
        self.shared.stats.snapshot()
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

/// Sends the first attempt of a request on `svc` (ready: mesh's layers always are).
fn start<S, C, B>(
    shared: &Arc<Shared<C>>,
    mut svc: S,
    req: http::Request<B>,
) -> ResponseFuture<S, B, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: From<TimedOut> + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
{
    {
        let now = Instant::now();
        let shared = shared.clone();
        let policy = &shared.policy;
        shared.budget.deposit(now);
        shared.stats.requests.fetch_add(1, Relaxed);
        if policy.attempts == 0 {
            let (parts, body) = req.into_parts();
            let fut = svc.call(http::Request::from_parts(parts, ReplayBody::new(body, 0)));
            return ResponseFuture::first(shared, fut, None, None, now);
        }
        let (mut parts, body) = req.into_parts();
        let body = ReplayBody::new(body, policy.max_replay_bytes);
        let idempotent = policy.retry_non_idempotent || is_idempotent(&parts.method);
        let deadline = parts.extensions.get::<Deadline>().copied();
        let spare = body.replay();
        // The template is cloned before the attempt bookkeeping goes in, so that it stays cheap.
        let template = parts.clone();
        let tried = TriedEndpoints::default();
        // A failed attempt names its endpoint (see `Classify::endpoint`), but one that times out
        // or loses a hedge race does not: only then must the balancer record the first pick.
        if policy.per_try_timeout.is_some() || policy.hedge.is_some() {
            parts.extensions.insert(tried.clone());
        }
        let req = http::Request::from_parts(parts, body);
        let hedgeable = idempotent
            && shared.latency.is_some()
            && spare.as_ref().is_some_and(ReplayBody::is_complete);
        let ctx = match spare {
            Some(spare) => Ok(Ctx {
                svc,
                template,
                spare,
                tried,
                idempotent,
                deadline,
            }),
            None => Err(svc),
        };
        match ctx {
            Ok(mut ctx) if hedgeable => {
                let fut = Box::pin(async move {
                    let started = Instant::now();
                    let (result, timed_out) = hedged(&shared, &mut ctx, req).await;
                    finish_or_retry(shared, ctx, result, timed_out, started).await
                });
                ResponseFuture::slow(fut)
            }
            Ok(mut ctx) => {
                let fut = ctx.svc.call(req);
                let timer = per_try_timer(&shared, deadline);
                ResponseFuture::first(shared, fut, Some(ctx), timer, now)
            }
            // Not replayable (too big): sent once.
            Err(mut svc) => {
                let fut = svc.call(req);
                let timer = per_try_timer(&shared, deadline);
                ResponseFuture::first(shared, fut, None, timer, now).unreplayable(idempotent)
            }
        }
    }
}

/// What a request needs to be retried: the service, the request's parts and its recorded body.
struct Ctx<S, B> {
    svc: S,
    template: http::request::Parts,
    spare: ReplayBody<B>,
    tried: TriedEndpoints,
    idempotent: bool,
    deadline: Option<Deadline>,
}

impl<S, B> Ctx<S, B> {
    /// The request again, with the recorded body and the attempt bookkeeping.
    fn again(&self) -> Option<http::Request<ReplayBody<B>>>
    where
        B: http_body::Body,
    {
        let body = self.spare.replay()?;
        let mut parts = self.template.clone();
        parts.extensions.insert(self.tried.clone());
        Some(http::Request::from_parts(parts, body))
    }
}

/// The per-try limit of an attempt: the per-try timeout, unless the request's deadline comes
/// first — then the timeout layer that set the deadline fails the request as a whole.
fn per_try_limit<C>(shared: &Shared<C>, deadline: Option<Deadline>) -> Option<Duration> {
    let per_try = shared.policy.per_try_timeout?;
    match deadline {
        Some(d) if d.remaining() <= per_try => None,
        _ => Some(per_try),
    }
}

/// The per-try timer of the first attempt, if one applies.
fn per_try_timer<C>(
    shared: &Shared<C>,
    deadline: Option<Deadline>,
) -> Option<(Pin<Box<Sleep>>, Duration)> {
    let limit = per_try_limit(shared, deadline)?;
    Some((Box::pin(tokio::time::sleep(limit)), limit))
}

pin_project! {
    /// Response future of [`Retry`]. The first attempt runs inline; only a retry (or hedging)
    /// moves the request to a boxed future.
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<http::Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S::Future, S::Response, S::Error>,
        ctx: Option<Ctx<S, B>>,
        // Set when retries were possible but the body is too big to replay.
        unreplayable: Option<bool>,
        shared: Option<Arc<Shared<C>>>,
        started: Instant,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T, E> {
        First { #[pin] fut: F, timer: Option<Pin<Box<Sleep>>>, limit: Duration },
        Slow { fut: BoxResult<T, E> },
        Done,
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<http::Request<ReplayBody<B>>>,
{
    fn first(
        shared: Arc<Shared<C>>,
        fut: S::Future,
        ctx: Option<Ctx<S, B>>,
        timer: Option<(Pin<Box<Sleep>>, Duration)>,
        started: Instant,
    ) -> Self {
        let (timer, limit) = match timer {
            Some((t, l)) => (Some(t), l),
            None => (None, Duration::ZERO),
        };
        Self {
            state: State::First { fut, timer, limit },
            ctx,
            unreplayable: None,
            shared: Some(shared),
            started,
        }
    }

    /// Retries were possible but the body cannot be replayed (`idempotent`: the method).
    fn unreplayable(mut self, idempotent: bool) -> Self {
        self.unreplayable = Some(idempotent);
        self
    }

    fn slow(fut: BoxResult<S::Response, S::Error>) -> Self {
        Self {
            state: State::Slow { fut },
            ctx: None,
            unreplayable: None,
            shared: None,
            started: Instant::now(),
        }
    }
}

impl<S, B, C> Future for ResponseFuture<S, B, C>
where
    S: Service<http::Request<ReplayBody<B>>> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: From<TimedOut> + Send + 'static,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    B: http_body::Body + Send + 'static,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::First { fut, timer, limit } => {
                    let fired = |t: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>| {
                        t.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
                    };
                    let (result, timed_out) = match fut.poll(cx) {
                        Poll::Ready(r) => (r, false),
                        Poll::Pending => match fired(timer, cx) {
                            true => {
                                let shared = this
                                    .shared
                                    .as_ref()
                                    .expect("first attempt has its shared state");
                                tracing::debug!(service = %shared.service, after = ?limit, "attempt timed out");
                                let err = TimedOut {
                                    service: shared.service.clone(),
                                    kind: TimeoutKind::PerTry,
                                    after: *limit,
                                };
                                (Err(err.into()), true)
                            }
                            false => return Poll::Pending,
                        },
                    };
                    let shared = this
                        .shared
                        .take()
                        .expect("first attempt has its shared state");
                    let class = classify(&shared, &result, timed_out);
                    let kind = match class {
                        ResponseClass::Success => {
                            if let Some(l) = &shared.latency {
                                l.record(this.started.elapsed());
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(result);
                        }
                        ResponseClass::Failure(kind) => kind,
                    };
                    // A cheap check first: most failures are not retryable, and those need no
                    // boxed retry loop.
                    let Some(ctx) = this.ctx.take() else {
                        if let Some(idempotent) = *this.unreplayable {
                            // Would it have been retried with a smaller body?
                            if decide_kind(&shared, kind, timed_out, idempotent) {
                                note_stop(&shared, Stop::NotReplayable, kind, 1);
                            }
                        }
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    };
                    if let Some(stop) = decide(
                        &shared,
                        kind,
                        timed_out,
                        ctx.idempotent,
                        0,
                        Some(&ctx.spare),
                        ctx.deadline,
                    ) {
                        note_stop(&shared, stop, kind, 1);
                        this.state.set(State::Done);
                        return Poll::Ready(result);
                    }
                    let fut = Box::pin(retry_loop(shared, ctx, result, kind, timed_out));
                    this.state.set(State::Slow { fut });
                }
                StateProj::Slow { fut } => {
                    let out = std::task::ready!(fut.as_mut().poll(cx));
                    this.state.set(State::Done);
                    return Poll::Ready(out);
                }
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            }
        }
    }
}

fn classify<C, T, E>(shared: &Shared<C>, result: &Result<T, E>, timed_out: bool) -> ResponseClass
where
    C: Classify<T, E>,
{
    if timed_out {
        ResponseClass::Failure(FailureKind::Timeout)
    } else {
        shared.classifier.classify(result.as_ref())
    }
}

/// After a first (possibly hedged) attempt: its result, or the retries it calls for.
async fn finish_or_retry<S, C, B>(
    shared: Arc<Shared<C>>,
    ctx: Ctx<S, B>,
    result: Result<S::Response, S::Error>,
    timed_out: bool,
    started: Instant,
) -> Result<S::Response, S::Error>
where
    S: Service<http::Request<ReplayBody<B>>>,
    S::Error: From<TimedOut>,
    C: Classify<S::Response, S::Error>,
    B: http_body::Body,
{
    match classify(&shared, &result, timed_out) {
        ResponseClass::Success => {
            if let Some(l) = &shared.latency {
                l.record(started.elapsed());
            }
            result
        }
        ResponseClass::Failure(kind) => retry_loop(shared, ctx, result, kind, timed_out).await,
    }
}

/// Retries a failed request while policy, body, deadline, slots and budget allow.
async fn retry_loop<S, C, B>(
    shared: Arc<Shared<C>>,
    mut ctx: Ctx<S, B>,
    mut last: Result<S::Response, S::Error>,
    mut kind: FailureKind,
    mut timed_out: bool,
) -> Result<S::Response, S::Error>
where
    S: Service<http::Request<ReplayBody<B>>>,
    S::Error: From<TimedOut>,
    C: Classify<S::Response, S::Error>,
    B: http_body::Body,
{
    let policy = &shared.policy;
    let mut attempt = 0u32;
    loop {
        let next = attempt + 1;
        if let Some(stop) = decide(
            &shared,
            kind,
            timed_out,
            ctx.idempotent,
            attempt,
            Some(&ctx.spare),
            ctx.deadline,
        ) {
            note_stop(&shared, stop, kind, next);
            return last;
        }
        let Some(slot) = RetrySlot::take(&shared) else {
            note_stop(&shared, Stop::Overflow, kind, next);
            return last;
        };
        if !shared.budget.withdraw(Instant::now()) {
            note_stop(&shared, Stop::Budget, kind, next);
            return last;
        }
        if let Some(addr) = shared.classifier.endpoint(last.as_ref()) {
            ctx.tried.record(addr);
        }
        let Some(req) = ctx.again() else {
            note_stop(&shared, Stop::NotReplayable, kind, next);
            return last;
        };
        drop(last);
        let wait = policy.backoff.delay(next);
        shared.stats.retries.fetch_add(1, Relaxed);
        tracing::debug!(service = %shared.service, attempt = next + 1, failure = %kind,
            backoff = ?wait, "retrying");
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let started = Instant::now();
        let (result, t) =
            with_per_try_timeout(&shared, ctx.deadline, call(&mut ctx.svc, req)).await;
        drop(slot);
        match classify(&shared, &result, t) {
            ResponseClass::Success => {
                if let Some(l) = &shared.latency {
                    l.record(started.elapsed());
                }
                return result;
            }
            ResponseClass::Failure(k) => {
                kind = k;
                timed_out = t;
                last = result;
                attempt = next;
            }
        }
    }
}

/// Why one failure is not retried.
enum Stop {
    NotRetryable,
    Attempts,
    NotReplayable,
    Deadline,
    Overflow,
    Budget,
}

/// Decides whether a failure may be retried, apart from the budget and the retry slots.
fn decide<C, B>(
    shared: &Shared<C>,
    kind: FailureKind,
    timed_out: bool,
    idempotent: bool,
    attempt: u32,
    spare: Option<&ReplayBody<B>>,
    deadline: Option<Deadline>,
) -> Option<Stop>
where
    B: http_body::Body,
{
    if !decide_kind(shared, kind, timed_out, idempotent) {
        return Some(Stop::NotRetryable);
    }
    if attempt >= shared.policy.attempts {
        return Some(Stop::Attempts);
    }
    if !spare.is_some_and(ReplayBody::is_replayable) {
        return Some(Stop::NotReplayable);
    }
    if deadline.is_some_and(|d| d.remaining() <= shared.policy.backoff.ceiling(attempt + 1)) {
        return Some(Stop::Deadline);
    }
    None
}

/// Whether this kind of failure is retried for this request at all (see the module docs).
fn decide_kind<C>(
    shared: &Shared<C>,
    kind: FailureKind,
    timed_out: bool,
    idempotent: bool,
) -> bool {
    let on = &shared.policy.retry_on;
    match kind {
        FailureKind::Connect => on.connect_failure,
        FailureKind::Refused => on.refused_stream,
        FailureKind::Timeout => timed_out && on.per_try_timeout && idempotent,
        FailureKind::Status(s) => idempotent && on.statuses.contains(&s),
        // gRPC calls are all POSTs; as in gRPC's own retry design, the codes listed are the
        // ones the service owner declares safe to retry, whatever the method.
        FailureKind::Grpc(code) => on.grpc_statuses.contains(&code),
        FailureKind::NoEndpoints | FailureKind::Local | FailureKind::Other => false,
    }
}

fn note_stop<C>(shared: &Shared<C>, stop: Stop, kind: FailureKind, next: u32) {
    let service = &shared.service;
    match stop {
        Stop::NotRetryable | Stop::Attempts => {}
        Stop::NotReplayable => {
            shared.stats.not_replayable.fetch_add(1, Relaxed);
            tracing::debug!(%service, failure = %kind, "not retried: the request body is too big to replay");
        }
        Stop::Deadline => {
            tracing::debug!(%service, failure = %kind, "not retried: no time left before the deadline");
        }
        Stop::Overflow => {
            shared.stats.retry_overflow.fetch_add(1, Relaxed);
            tracing::debug!(%service, failure = %kind, max = shared.policy.max_concurrent_retries,
                "not retried: too many retries in flight");
        }
        Stop::Budget => {
            shared.stats.budget_exhausted.fetch_add(1, Relaxed);
            tracing::debug!(%service, failure = %kind, attempt = next,
                "not retried: retry budget exhausted");
        }
    }
}

/// One of `maxConcurrentRetries`, released on drop.
struct RetrySlot<'a>(&'a AtomicUsize);

impl<'a> RetrySlot<'a> {
    fn take<C>(shared: &'a Shared<C>) -> Option<Self> {
        let max = shared.policy.max_concurrent_retries as usize;
        let n = shared.retries_in_flight.fetch_add(1, Relaxed);
        if n >= max {
            shared.retries_in_flight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Self(&shared.retries_in_flight))
    }
}

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

async fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    svc.ready().await?.call(req).await
}

/// Runs one attempt under the per-try timeout (never past the request's deadline); returns the
/// result and whether the per-try timeout fired.
async fn with_per_try_timeout<C, T, E, F>(
    shared: &Shared<C>,
    deadline: Option<Deadline>,
    attempt: F,
) -> (Result<T, E>, bool)
where
    F: Future<Output = Result<T, E>>,
    E: From<TimedOut>,
{
    let Some(limit) = per_try_limit(shared, deadline) else {
        return (attempt.await, false);
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(r) => (r, false),
        Err(_) => {
            tracing::debug!(service = %shared.service, after = ?limit, "attempt timed out");
            let err = TimedOut {
                service: shared.service.clone(),
                kind: TimeoutKind::PerTry,
                after: limit,
            };
            (Err(err.into()), true)
        }
    }
}

/// The first attempt with a possible hedge; returns the first good result (or the last bad one)
/// and whether the per-try timeout fired.
async fn hedged<S, C, B>(
    shared: &Shared<C>,
    ctx: &mut Ctx<S, B>,
    req: http::Request<ReplayBody<B>>,
) -> (Result<S::Response, S::Error>, bool)
where
    S: Service<http::Request<ReplayBody<B>>>,
    S::Error: From<TimedOut>,
    C: Classify<S::Response, S::Error>,
    B: http_body::Body,
{
    let hedge = shared
        .policy
        .hedge
        .as_ref()
        .expect("hedged() only with a hedge policy");
    let delay = shared
        .latency
        .as_ref()
        .and_then(|l| l.quantile(hedge.percentile, hedge.min_samples));
    if let Err(e) = ctx.svc.ready().await {
        return (Err(e), false);
    }
    let first = Box::pin(ctx.svc.call(req));
    let Some(delay) = delay else {
        return with_per_try_timeout(shared, ctx.deadline, first).await;
    };
    let deadline = ctx.deadline;
    let race = async move {
        let timer = Box::pin(tokio::time::sleep(delay));
        let first = match select(first, timer).await {
            Either::Left((result, _)) => return result,
            Either::Right(((), first)) => first,
        };
        let Some(_slot) = RetrySlot::take(shared) else {
            shared.stats.retry_overflow.fetch_add(1, Relaxed);
            return first.await;
        };
        if !shared.budget.withdraw(Instant::now()) {
            shared.stats.budget_exhausted.fetch_add(1, Relaxed);
            tracing::debug!(service = %shared.service, "not hedged: retry budget exhausted");
            return first.await;
        }
        let Some(again) = ctx.again() else {
            return first.await;
        };
        if ctx.svc.ready().await.is_err() {
            return first.await;
        }
        shared.stats.hedges.fetch_add(1, Relaxed);
        tracing::debug!(service = %shared.service, after = ?delay, "hedging: the first attempt is slow");
        // The balancer sees the first attempt's endpoint in TriedEndpoints and goes elsewhere.
        let second = Box::pin(ctx.svc.call(again));
        match select(first, second).await {
            Either::Left((r, other)) => prefer_success(shared, r, other).await,
            Either::Right((r, other)) => prefer_success(shared, r, other).await,
        }
    };
    with_per_try_timeout(shared, deadline, race).await
}

/// The first result if it succeeded, otherwise whatever the other attempt gives.
async fn prefer_success<C, T, E, F>(
    shared: &Shared<C>,
    first: Result<T, E>,
    other: F,
) -> Result<T, E>
where
    C: Classify<T, E>,
    F: Future<Output = Result<T, E>>,
{
    if shared.classifier.classify(first.as_ref()).is_failure() {
        other.await
    } else {
        first
    }
}
