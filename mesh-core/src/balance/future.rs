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

/// Counts a request against its endpoint while it is in flight, and feeds its latency into the
/// endpoint's estimate when the response (head) arrives.
pub(crate) struct InFlight<S> {
    slot: Arc<Slot<S>>,
    epoch: Instant,
    decay_ns: f64,
    start: Instant,
}

impl<S> InFlight<S> {
    pub(crate) fn new<T>(slot: Arc<Slot<S>>, shared: &Shared<T>, start: Instant) -> Self {
        slot.load.start();
        Self {
            slot,
            epoch: shared.epoch,
            decay_ns: shared.decay_ns,
            start,
        }
    }

    fn complete(&self) {
        let now = Instant::now();
        self.slot.load.observe(
            now.saturating_duration_since(self.start),
            super::ewma::nanos_since(self.epoch, now),
            self.decay_ns,
        );
    }
}

impl<S> Drop for InFlight<S> {
    fn drop(&mut self) {
        self.slot.load.finish();
    }
}

type BoxResponse<S, Req> = Pin<
    Box<
        dyn Future<Output = Result<<S as Service<Req>>::Response, <S as Service<Req>>::Error>>
            + Send,
    >,
>;

pin_project! {
    /// Response future of [`Balancer`](super::Balancer).
    pub struct ResponseFuture<S: Service<Req>, Req> {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Called { #[pin] call: Oneshot<S, Req>, in_flight: Option<InFlight<S>> },
        Waiting { fut: BoxResponse<S, Req> },
        Failed { error: Option<S::Error> },
    }
}

impl<S: Service<Req>, Req> ResponseFuture<S, Req> {
    pub(crate) fn called(call: Oneshot<S, Req>, in_flight: InFlight<S>) -> Self {
        Self {
            state: State::Called {
                call,
                in_flight: Some(in_flight),
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

impl<S: Service<Req>, Req> Future for ResponseFuture<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { call, in_flight } => {
                let out = ready!(call.poll(cx));
                if let Some(t) = in_flight.take() {
                    t.complete();
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
