//! [`Breaker`]: admits or refuses each call, and hands its outcome to the state machine.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_service::Service;

use super::{
    BreakerState, CircuitOpen,
    future::{FutState, Guard, ResponseFuture},
    state::{Shared, state_of},
};
use crate::classify::Classify;

/// The breaker service; see the [module docs](super). A `Breaker` built with
/// [`Breaker::disabled`] passes every call through.
pub struct Breaker<S, C> {
    inner: S,
    shared: Option<Arc<Shared<C>>>,
}

impl<S: Clone, C> Clone for Breaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S, C> Breaker<S, C> {
    pub(super) fn with_shared(inner: S, shared: Arc<Shared<C>>) -> Self {
        Self {
            inner,
            shared: Some(shared),
        }
    }

    /// No breaker: calls pass through.
    pub fn disabled(inner: S) -> Self {
        Self {
            inner,
            shared: None,
        }
    }

    /// The current state (`None` when disabled).
    pub fn state(&self) -> Option<BreakerState> {
        self.shared.as_deref().map(state_of)
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Breaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("state", &self.state())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, C, Req> Service<Req> for Breaker<S, C>
where
    S: Service<Req>,
    S::Error: From<CircuitOpen>,
    C: Classify<S::Response, S::Error> + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(shared) = &self.shared else {
            return ResponseFuture {
                state: FutState::Pass {
                    fut: self.inner.call(req),
                },
            };
        };
        match shared.admit() {
            Ok(trial) => ResponseFuture {
                state: FutState::Tracked {
                    fut: self.inner.call(req),
                    guard: Some(Guard {
                        shared: shared.clone(),
                        trial,
                        recorded: false,
                    }),
                },
            },
            Err(open) => {
                tracing::debug!(service = %open.service, "call refused: circuit breaker open");
                ResponseFuture {
                    state: FutState::Refused {
                        error: Some(open.into()),
                    },
                }
            }
        }
    }
}
