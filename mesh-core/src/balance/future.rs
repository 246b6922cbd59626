//! The balancer's response future.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use super::{Shared, table::Slot};
use crate::{
    classify::{Classify, FailureKind, LateOutcome, Report, ResponseClass},
    deadline::AttemptTimeout,
    outlier::HealthState,
};

/// Counts a request against its endpoint while it is in flight; when the response (head)
/// arrives, feeds its latency into the endpoint's load estimate and its class into the
/// endpoint's health.
pub(crate) struct InFlight<S> {
    slot: Arc<Slot<S>>,
    epoch: Instant,
    decay_ns: f64,
    start: Instant,
    done: bool,
    /// When the attempt's per-try timeout fires: dropped unanswered after it, the attempt
    /// timed out on this endpoint.
    attempt_timeout: Option<AttemptTimeout>,
}

impl<S> InFlight<S> {
    pub(crate) fn new<T, C>(
        slot: Arc<Slot<S>>,
        shared: &Shared<T, C>,
        start: Instant,
        attempt_timeout: Option<AttemptTimeout>,
    ) -> Self {
        slot.load.start();
        Self {
            slot,
            epoch: shared.epoch,
            decay_ns: shared.decay_ns,
            start,
            done: false,
            attempt_timeout,
        }
    }

    fn complete(&mut self, class: ResponseClass) {
        let now = self.observe(class);
        self.slot
            .outlier
            .record(self.slot.endpoint.addr, &self.slot.health, class, now);
    }

    /// The response head is here but its class is only known at the end of its body: feeds the
    /// latency now and returns the report to make later.
    fn defer(&mut self) -> LateOutcome {
        self.observe(ResponseClass::Success);
        LateOutcome::from_report(Deferred {
            outlier: self.slot.outlier.clone(),
            health: self.slot.health.clone(),
            addr: self.slot.endpoint.addr,
        })
    }

    /// Feeds the latency into the load estimate; returns the time.
    fn observe(&mut self, class: ResponseClass) -> Instant {
        self.done = true;
        let now = Instant::now();
        let now_ns = super::ewma::nanos_since(self.epoch, now);
        let mut rtt = now.saturating_duration_since(self.start);
        if class.is_endpoint_failure() {
            // A failure never makes an endpoint look faster: fast failures (connection refused)
            // would otherwise attract traffic.
            if let Some(est) = self.slot.load.estimate_ns(now_ns, self.decay_ns) {
                rtt = rtt.max(std::time::Duration::from_nanos(est as u64));
            }
        }
        self.slot.load.observe(rtt, now_ns, self.decay_ns);
        now
    }
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        if !self.done && self.attempt_timeout.is_some_and(|t| t.has_fired()) {
            // Dropped by its per-try timeout: the endpoint did not answer in time. Its latency
            // (at least the timeout) feeds the load estimate too, so that P2C avoids it.
            tracing::debug!(endpoint = %self.slot.endpoint.addr, "attempt timed out on the endpoint");
            self.complete(ResponseClass::Failure(FailureKind::Timeout));
        }
        self.slot.load.finish();
        if !self.done && self.slot.health.state() == HealthState::Probing {
            self.slot
                .outlier
                .probe_abandoned(self.slot.endpoint.addr, &self.slot.health);
        }
    }
}

/// Where a deferred outcome goes: the endpoint's health.
struct Deferred {
    outlier: std::sync::Arc<crate::outlier::Outlier>,
    health: std::sync::Arc<crate::outlier::Health>,
    addr: std::net::SocketAddr,
}

impl Report for Deferred {
    fn report(&self, class: Option<ResponseClass>) {
        match class {
            Some(class) => self
                .outlier
                .record(self.addr, &self.health, class, Instant::now()),
            None if self.health.state() == HealthState::Probing => {
                self.outlier.probe_abandoned(self.addr, &self.health)
            }
            None => {}
        }
    }
}

type BoxResponse<S, Req> = Pin<
    Box<
        dyn Future<Output = Result<<S as Service<Req>>::Response, <S as Service<Req>>::Error>>
            + Send,
    >,
>;

pin_project! {
    /// The endpoint call: made at once, or (if the endpoint was not ready) after it is. The
    /// rare waiting case is boxed: it holds the whole request, and this future is moved through
    /// every layer above.
    #[project = CallProj]
    pub(crate) enum Call<S: Service<Req>, Req> {
        Called { #[pin] fut: S::Future },
        Waiting { oneshot: Pin<Box<Oneshot<S, Req>>> },
    }
}

#[allow(non_snake_case)]
impl<S: Service<Req>, Req> Call<S, Req> {
    pub(crate) fn Called(fut: S::Future) -> Self {
        Call::Called { fut }
    }
    pub(crate) fn Waiting(oneshot: Oneshot<S, Req>) -> Self {
        Call::Waiting {
            oneshot: Box::pin(oneshot),
        }
    }
}

impl<S: Service<Req>, Req> Future for Call<S, Req> {
    type Output = Result<S::Response, S::Error>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CallProj::Called { fut } => fut.poll(cx),
            CallProj::Waiting { oneshot } => oneshot.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// Response future of [`Balancer`](super::Balancer).
    pub struct ResponseFuture<S: Service<Req>, Req, C> {
        #[pin]
        state: State<S, Req, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req, C> {
        Called { #[pin] call: Call<S, Req>, in_flight: Option<InFlight<S>>, classifier: C },
        Waiting { fut: BoxResponse<S, Req> },
        Failed { error: Option<S::Error> },
    }
}

impl<S: Service<Req>, Req, C> ResponseFuture<S, Req, C> {
    pub(crate) fn called(call: Call<S, Req>, in_flight: InFlight<S>, classifier: C) -> Self {
        Self {
            state: State::Called {
                call,
                in_flight: Some(in_flight),
                classifier,
            },
        }
    }

    pub(crate) fn waiting(fut: BoxResponse<S, Req>) -> Self {
        Self {
            state: State::Waiting { fut },
        }
    }

    pub(crate) fn failed(error: S::Error) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called {
                call,
                in_flight,
                classifier,
            } => {
                let mut out = ready!(call.poll(cx));
                if let Some(mut t) = in_flight.take() {
                    let class = classifier.classify(out.as_ref());
                    let deferred = match (&mut out, class) {
                        (Ok(rsp), ResponseClass::Success) => {
                            classifier.defer_outcome(rsp, &mut || t.defer())
                        }
                        _ => false,
                    };
                    if !deferred {
                        t.complete(class);
                    }
                }
                Poll::Ready(out)
            }
            StateProj::Waiting { fut } => fut.as_mut().poll(cx),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}
