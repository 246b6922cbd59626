//! What every attempt of a retried request needs, shared by the retry loop and the response
//! future: the request's context (service, parts, recorded body), the per-try limit and timer,
//! the `maxConcurrentRetries` slot, and a readiness-driven call.

use super::*;
use crate::deadline::AttemptTimeout;

/// What a request needs to be retried: the service, the request's parts and its recorded body.
pub(super) struct Ctx<S, B> {
    pub(super) svc: S,
    pub(super) template: http::request::Parts,
    pub(super) spare: ReplayBody<B>,
    pub(super) tried: TriedEndpoints,
    pub(super) idempotent: bool,
    pub(super) deadline: Option<Deadline>,
}

impl<S, B> Ctx<S, B> {
    /// The request again, with the recorded body and the attempt bookkeeping.
    pub(super) fn again(&self) -> Option<http::Request<ReplayBody<B>>>
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
pub(super) fn per_try_limit<C>(shared: &Shared<C>, deadline: Option<Deadline>) -> Option<Duration> {
    let per_try = shared.policy.per_try_timeout?;
    match deadline {
        Some(d) if d.remaining() <= per_try => None,
        _ => Some(per_try),
    }
}

/// Marks an attempt with the instant its per-try timeout fires, when one applies (see
/// [`AttemptTimeout`]).
pub(super) fn mark_attempt<C, B>(
    shared: &Shared<C>,
    deadline: Option<Deadline>,
    req: &mut http::Request<B>,
) {
    if let Some(limit) = per_try_limit(shared, deadline) {
        req.extensions_mut().insert(AttemptTimeout::after(limit));
    }
}

/// The per-try timer of the first attempt, if one applies.
pub(super) fn per_try_timer<C>(
    shared: &Shared<C>,
    deadline: Option<Deadline>,
) -> Option<(Pin<Box<Sleep>>, Duration)> {
    let limit = per_try_limit(shared, deadline)?;
    Some((Box::pin(tokio::time::sleep(limit)), limit))
}

/// One of `maxConcurrentRetries`, released on drop.
pub(super) struct RetrySlot<'a>(&'a AtomicUsize);

impl<'a> RetrySlot<'a> {
    pub(super) fn take<C>(shared: &'a Shared<C>) -> Option<Self> {
        let max = shared.share.max_concurrent as usize;
        let n = shared.share.in_flight.fetch_add(1, Relaxed);
        if n >= max {
            shared.share.in_flight.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Self(&shared.share.in_flight))
    }
}

impl Drop for RetrySlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

pub(super) async fn call<S, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    svc.ready().await?.call(req).await
}

/// Runs one attempt under the per-try timeout (never past the request's deadline); returns the
/// result and whether the per-try timeout fired.
pub(super) async fn with_per_try_timeout<C, T, E, F>(
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
