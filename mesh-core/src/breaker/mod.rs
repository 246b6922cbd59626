//! A classic service-level circuit breaker (closed / open / half-open), Resilience4j style.
//!
//! Outlier ejection ([`outlier`](crate::outlier)) takes single bad endpoints out of rotation
//! and is on by default. This breaker is for users who want the whole destination cut off when
//! it fails as a whole, so that callers fail fast instead of waiting on a dying dependency:
//!
//! - **closed**: calls pass; the outcomes of the last `windowSize` calls are kept. When at least
//!   `minimumCalls` are known and the failure rate reaches `failureRateThreshold`, it **opens**;
//! - **open**: calls fail at once with [`CircuitOpen`] (saying when it will try again) for
//!   `waitInOpen`;
//! - **half-open**: `halfOpenCalls` trial calls pass (others are refused); if their failure rate
//!   is below the threshold it closes, otherwise it opens again.
//!
//! An outcome is what the [`Classify`](crate::classify::Classify) of the protocol says: for gRPC, a status that comes in
//! the trailers is recorded when the response body ends (see
//! [`LateOutcome`](crate::classify::LateOutcome)), like outlier detection does.
//!
//! Defaults are Resilience4j's: threshold 50 %, window 100 calls, minimum 100 calls, 60 s open,
//! 10 trial calls. Every state change is a `warn` (opening) or `info` event. Not in the default
//! stack; enable it per service with `ServiceConfig::breaker`.
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::{breaker::{BreakerLayer, BreakerPolicy, BreakerState, CircuitOpen}, classify::ErrorsFail};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let policy = BreakerPolicy { minimum_calls: 4, window_size: 4, wait_in_open: Duration::from_secs(60), ..Default::default() };
//! let layer = BreakerLayer::new("dep:80".parse().unwrap(), &policy, ErrorsFail).unwrap();
//! let mut svc = ServiceBuilder::new().layer(layer.clone())
//!     .service_fn(|_req: http::Request<()>| async { Err::<(), CircuitOpen>(CircuitOpen { service: "dep:80".parse().unwrap(), retry_after: Duration::ZERO }) });
//! for _ in 0..4 { let _ = svc.ready().await.unwrap().call(http::Request::new(())).await; }
//! assert_eq!(layer.state(), BreakerState::Open);
//! # }
//! ```

mod future;
mod layer;
mod service;
mod state;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::{future::ResponseFuture, layer::BreakerLayer, service::Breaker};
use crate::{ServiceName, policy_error::PolicyError};

/// Breaker settings (Resilience4j's names and defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BreakerPolicy {
    /// Open at this failure rate (0.5 = 50 %).
    pub failure_rate_threshold: f64,
    /// Outcomes kept (a count-based sliding window).
    pub window_size: u32,
    /// No decision before this many outcomes.
    pub minimum_calls: u32,
    /// How long it stays open.
    #[serde(with = "crate::duration::serde")]
    pub wait_in_open: Duration,
    /// Trial calls when half-open.
    pub half_open_calls: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failure_rate_threshold: 0.5,
            window_size: 100,
            minimum_calls: 100,
            wait_in_open: Duration::from_secs(60),
            half_open_calls: 10,
        }
    }
}

impl BreakerPolicy {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.failure_rate_threshold) || self.failure_rate_threshold == 0.0
        {
            return Err(PolicyError::new(
                "failureRateThreshold",
                "must be in (0, 1]",
            ));
        }
        if self.window_size == 0 || self.window_size > 100_000 {
            return Err(PolicyError::new("windowSize", "must be 1 to 100000"));
        }
        if self.minimum_calls == 0 || self.minimum_calls > self.window_size {
            return Err(PolicyError::new("minimumCalls", "must be 1 to windowSize"));
        }
        if self.half_open_calls == 0 {
            return Err(PolicyError::new("halfOpenCalls", "must be at least 1"));
        }
        Ok(())
    }
}

/// The breaker is open: the call was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker of service {:?} is open; retry after {}", service.as_str(), crate::duration::format(*retry_after))]
pub struct CircuitOpen {
    /// The service.
    pub service: ServiceName,
    /// When the breaker lets trial calls through.
    pub retry_after: Duration,
}

/// The breaker's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls pass.
    Closed,
    /// Calls are refused.
    Open,
    /// Trial calls pass.
    HalfOpen,
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex};

    use super::{
        state::{Shared, State, state_of},
        *,
    };
    use crate::classify::ErrorsFail;

    fn shared(policy: BreakerPolicy) -> Shared<ErrorsFail> {
        Shared {
            service: "svc:80".parse().unwrap(),
            policy,
            state: Mutex::new(State::Closed {
                outcomes: VecDeque::new(),
                failures: 0,
            }),
            rounds: Default::default(),
            classifier: ErrorsFail,
        }
    }

    #[test]
    fn opens_at_the_threshold_then_half_opens_and_closes() {
        let s = shared(BreakerPolicy {
            window_size: 10,
            minimum_calls: 10,
            wait_in_open: Duration::from_millis(1),
            half_open_calls: 2,
            ..BreakerPolicy::default()
        });
        for i in 0..10 {
            assert_eq!(s.admit().unwrap(), None);
            s.record(None, i % 2 == 0);
        }
        assert_eq!(state_of(&s), BreakerState::Open);
        assert!(s.admit().is_err());
        std::thread::sleep(Duration::from_millis(3));
        let first = s.admit().unwrap().expect("first trial");
        let second = s.admit().unwrap().expect("second trial");
        assert!(s.admit().is_err(), "no more trials");
        s.record(Some(first), false);
        s.record(Some(second), false);
        assert_eq!(state_of(&s), BreakerState::Closed);
    }

    #[test]
    fn failed_trials_reopen_and_minimum_calls_is_respected() {
        let s = shared(BreakerPolicy {
            window_size: 10,
            minimum_calls: 5,
            wait_in_open: Duration::from_millis(1),
            half_open_calls: 1,
            ..BreakerPolicy::default()
        });
        for _ in 0..4 {
            s.record(None, true);
        }
        assert_eq!(state_of(&s), BreakerState::Closed, "4 calls < minimum 5");
        s.record(None, true);
        assert_eq!(state_of(&s), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(3));
        let trial = s.admit().unwrap().expect("a trial");
        s.record(Some(trial), true);
        assert_eq!(state_of(&s), BreakerState::Open);
    }

    #[test]
    fn released_trials_free_their_place_and_old_rounds_do_not_count() {
        let s = shared(BreakerPolicy {
            window_size: 2,
            minimum_calls: 2,
            wait_in_open: Duration::from_millis(1),
            half_open_calls: 1,
            ..BreakerPolicy::default()
        });
        s.record(None, true);
        s.record(None, true);
        std::thread::sleep(Duration::from_millis(3));
        // A streaming trial gives its place back at its head; its outcome comes later.
        let streaming = s.admit().unwrap().expect("a trial");
        assert!(s.admit().is_err(), "the only place is taken");
        s.release_trial(streaming);
        let next = s.admit().unwrap().expect("the place is free again");
        s.record(Some(next), true);
        assert_eq!(
            state_of(&s),
            BreakerState::Open,
            "the failed trial re-opened it"
        );
        std::thread::sleep(Duration::from_millis(3));
        let current = s.admit().unwrap().expect("a trial of the next round");
        // The stream of the first round ends well: it no longer counts.
        s.record(Some(streaming), false);
        s.release_trial(streaming);
        assert_eq!(state_of(&s), BreakerState::HalfOpen);
        assert!(s.admit().is_err(), "the old round's release freed nothing");
        s.record(Some(current), false);
        assert_eq!(state_of(&s), BreakerState::Closed);
    }

    #[test]
    fn validation_names_fields() {
        let p = BreakerPolicy {
            minimum_calls: 200,
            ..BreakerPolicy::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "minimumCalls");
    }
}
