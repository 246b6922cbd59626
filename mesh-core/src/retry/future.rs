//! The retry layer's response future: the first attempt, hedging, and the per-try timer.

use super::{
    attempts::{Stop, classify, decide, decide_kind, finish_or_retry, note_stop, retry_loop},
    ctx::{Ctx, RetrySlot, mark_attempt, per_try_timer, with_per_try_timeout},
    *,
};
use crate::deadline::AttemptTimeout;

/// Sends the first attempt of a request on `svc` (ready: mesh's layers always are).
pub(super) fn start<S, C, B>(
    shared: &Arc<Shared<C>>,
    svc: S,
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
    let max = match shared.policy.attempts {
        0 => 0,
        _ => shared.policy.max_replay_bytes,
    };
    let (parts, body) = req.into_parts();
    start_wrapped(
        shared,
        svc,
        http::Request::from_parts(parts, ReplayBody::new(body, max)),
    )
}

/// [`start`] for a request whose body is already wrapped for replay.
pub(super) fn start_wrapped<S, C, B>(
    shared: &Arc<Shared<C>>,
    mut svc: S,
    req: http::Request<ReplayBody<B>>,
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
        shared.share.budget.deposit(now);
        shared.share.stats.requests.fetch_add(1, Relaxed);
        if policy.attempts == 0 {
            let fut = svc.call(req);
            return ResponseFuture::first(shared, fut, None, None, now);
        }
        let (mut parts, body) = req.into_parts();
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
                let mut req = req;
                mark_attempt(&shared, deadline, &mut req);
                let fut = ctx.svc.call(req);
                let timer = per_try_timer(&shared, deadline);
                ResponseFuture::first(shared, fut, Some(ctx), timer, now)
            }
            // Not replayable (too big): sent once.
            Err(mut svc) => {
                let mut req = req;
                mark_attempt(&shared, deadline, &mut req);
                let fut = svc.call(req);
                let timer = per_try_timer(&shared, deadline);
                ResponseFuture::first(shared, fut, None, timer, now).unreplayable(idempotent)
            }
        }
    }
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

/// The first attempt with a possible hedge; returns the first good result (or the last bad one)
/// and whether the per-try timeout fired.
pub(super) async fn hedged<S, C, B>(
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
    let mut req = req;
    mark_attempt(shared, ctx.deadline, &mut req);
    let attempt_timeout = req.extensions().get::<AttemptTimeout>().copied();
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
            shared.share.stats.retry_overflow.fetch_add(1, Relaxed);
            return first.await;
        };
        if !shared.share.budget.withdraw(Instant::now()) {
            shared.share.stats.budget_exhausted.fetch_add(1, Relaxed);
            tracing::debug!(service = %shared.service, "not hedged: retry budget exhausted");
            return first.await;
        }
        let Some(mut again) = ctx.again() else {
            return first.await;
        };
        // The race has one per-try timer: the hedge times out with the first attempt.
        if let Some(t) = attempt_timeout {
            again.extensions_mut().insert(t);
        }
        if ctx.svc.ready().await.is_err() {
            return first.await;
        }
        shared.share.stats.hedges.fetch_add(1, Relaxed);
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
pub(super) async fn prefer_success<C, T, E, F>(
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
