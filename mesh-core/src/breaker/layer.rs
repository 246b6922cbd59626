//! [`BreakerLayer`]: one breaker per service, shared by every service it wraps.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tower::Layer;

use super::{
    Breaker, BreakerPolicy, BreakerState,
    state::{Shared, State, state_of},
};
use crate::{ServiceName, policy_error::PolicyError};

/// Applies [`Breaker`].
pub struct BreakerLayer<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for BreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> BreakerLayer<C> {
    /// A breaker for `service`; `classifier` tells failures.
    pub fn new(
        service: ServiceName,
        policy: &BreakerPolicy,
        classifier: C,
    ) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                service,
                policy: policy.clone(),
                state: Mutex::new(State::Closed {
                    outcomes: VecDeque::new(),
                    failures: 0,
                }),
                rounds: Default::default(),
                classifier,
            }),
        })
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        state_of(&self.shared)
    }
}

impl<S, C> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;
    fn layer(&self, inner: S) -> Breaker<S, C> {
        Breaker::with_shared(inner, self.shared.clone())
    }
}
