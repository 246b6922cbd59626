//! The breaker's response future: records the outcome when the response (or its body) ends.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use pin_project_lite::pin_project;

use super::state::{Shared, Trial};
use crate::classify::{Classify, LateOutcome, Report, ResponseClass};

/// A call admitted by the breaker, until its outcome is recorded. Dropped unrecorded (the
/// caller gave up), a trial gives its place to another.
pub(super) struct Guard<C> {
    pub(super) shared: Arc<Shared<C>>,
    pub(super) trial: Option<Trial>,
    pub(super) recorded: bool,
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if let (Some(trial), false) = (self.trial, self.recorded) {
            self.shared.release_trial(trial);
        }
    }
}

/// Where a deferred outcome goes: the breaker's window, or its half-open round (whose place
/// the trial gave back when its response head arrived).
struct Late<C> {
    shared: Arc<Shared<C>>,
    trial: Option<Trial>,
}

impl<C: Send + Sync + 'static> Report for Late<C> {
    fn report(&self, class: Option<ResponseClass>) {
        if let Some(class) = class {
            self.shared.record(self.trial, class.is_endpoint_failure());
        }
    }
}

pin_project! {
    /// Response future of [`Breaker`].
    pub struct ResponseFuture<F, C, E> {
        #[pin]
        pub(super) state: FutState<F, C, E>,
    }
}

pin_project! {
    #[project = FutProj]
    pub(super) enum FutState<F, C, E> {
        Pass { #[pin] fut: F },
        Tracked { #[pin] fut: F, guard: Option<Guard<C>> },
        Refused { error: Option<E> },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C, E>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E> + Send + Sync + 'static,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FutProj::Pass { fut } => fut.poll(cx),
            FutProj::Tracked { fut, guard } => {
                let mut out = ready!(fut.poll(cx));
                if let Some(mut g) = guard.take() {
                    let class = g.shared.classifier.classify(out.as_ref());
                    let deferred = match (&mut out, class) {
                        // A gRPC response whose status comes in its trailers: recorded when
                        // the body ends. A trial gives its place back now (when the guard
                        // drops), so that a long stream does not hold the half-open breaker.
                        (Ok(rsp), ResponseClass::Success) => {
                            g.shared.classifier.defer_outcome(rsp, &mut || {
                                LateOutcome::from_report(Late {
                                    shared: g.shared.clone(),
                                    trial: g.trial,
                                })
                            })
                        }
                        _ => false,
                    };
                    if !deferred {
                        g.shared.record(g.trial, class.is_endpoint_failure());
                        g.recorded = true;
                    }
                }
                Poll::Ready(out)
            }
            FutProj::Refused { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}
