//! The retry loop and its decisions: classify an attempt, retry or stop, and say why.

use super::{
    ctx::{Ctx, RetrySlot, call, mark_attempt, with_per_try_timeout},
    *,
};

pub(super) fn classify<C, T, E>(
    shared: &Shared<C>,
    result: &Result<T, E>,
    timed_out: bool,
) -> ResponseClass
where
    C: Classify<T, E>,
{
    match shared.classifier.classify(result.as_ref()) {
        // The per-try timer's own error: a timeout, unless the protocol names it otherwise
        // (gRPC: DEADLINE_EXCEEDED).
        ResponseClass::Success if timed_out => ResponseClass::Failure(FailureKind::Timeout),
        class => class,
    }
}

/// After a first (possibly hedged) attempt: its result, or the retries it calls for.
pub(super) async fn finish_or_retry<S, C, B>(
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
pub(super) async fn retry_loop<S, C, B>(
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
        if !shared.share.budget.withdraw(Instant::now()) {
            note_stop(&shared, Stop::Budget, kind, next);
            return last;
        }
        if let Some(addr) = shared.classifier.endpoint(last.as_ref()) {
            ctx.tried.record(addr);
        }
        let Some(mut req) = ctx.again() else {
            note_stop(&shared, Stop::NotReplayable, kind, next);
            return last;
        };
        drop(last);
        let wait = policy.backoff.delay(next);
        shared.share.stats.retries.fetch_add(1, Relaxed);
        tracing::debug!(service = %shared.service, attempt = next + 1, failure = %kind,
            backoff = ?wait, "retrying");
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let started = Instant::now();
        mark_attempt(&shared, ctx.deadline, &mut req);
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
pub(super) enum Stop {
    NotRetryable,
    Attempts,
    NotReplayable,
    Deadline,
    Overflow,
    Budget,
}

/// Decides whether a failure may be retried, apart from the budget and the retry slots.
pub(super) fn decide<C, B>(
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
pub(super) fn decide_kind<C>(
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
        FailureKind::Reset => on.reset && idempotent,
        FailureKind::Status(s) => idempotent && on.statuses.contains(&s),
        // gRPC calls are all POSTs; as in gRPC's own retry design, the codes listed are the
        // ones the service owner declares safe to retry, whatever the method.
        FailureKind::Grpc(code) => on.grpc_statuses.contains(&code),
        FailureKind::Identity
        | FailureKind::NoEndpoints
        | FailureKind::Local
        | FailureKind::Other => false,
    }
}

pub(super) fn note_stop<C>(shared: &Shared<C>, stop: Stop, kind: FailureKind, next: u32) {
    let service = &shared.service;
    match stop {
        Stop::NotRetryable | Stop::Attempts => {}
        Stop::NotReplayable => {
            shared.share.stats.not_replayable.fetch_add(1, Relaxed);
            tracing::debug!(%service, failure = %kind, "not retried: the request body is too big to replay");
        }
        Stop::Deadline => {
            tracing::debug!(%service, failure = %kind, "not retried: no time left before the deadline");
        }
        Stop::Overflow => {
            shared.share.stats.retry_overflow.fetch_add(1, Relaxed);
            tracing::debug!(%service, failure = %kind, max = shared.share.max_concurrent,
                "not retried: too many retries in flight");
        }
        Stop::Budget => {
            shared.share.stats.budget_exhausted.fetch_add(1, Relaxed);
            tracing::debug!(%service, failure = %kind, attempt = next,
                "not retried: retry budget exhausted");
        }
    }
}
