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
//! An outcome is what the [`Classify`] of the protocol says: for gRPC, a status that comes in
//! the trailers is recorded when the response body ends (see
//! [`LateOutcome`]), like outlier detection does.
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

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tower::Layer;
use tower_service::Service;

use crate::{
    ServiceName,
    classify::{Classify, LateOutcome, Report, ResponseClass},
    policy_error::PolicyError,
};

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

enum State {
    Closed {
        outcomes: VecDeque<bool>,
        failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Which half-open period this is: outcomes of trials from an earlier one no longer
        /// count.
        round: u64,
        /// Trial calls admitted and not yet finished or handed over (see `Trial`).
        issued: u32,
        ok: u32,
        failed: u32,
    },
}

/// A half-open trial call: the round it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Trial(u64);

struct Shared<C> {
    service: ServiceName,
    policy: BreakerPolicy,
    state: Mutex<State>,
    /// Half-open periods so far (numbers them).
    rounds: std::sync::atomic::AtomicU64,
    classifier: C,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call (returning the trial it is, when half-open) or refuses it.
    fn admit(&self) -> Result<Option<Trial>, CircuitOpen> {
        let mut st = self.lock();
        match &mut *st {
            State::Closed { .. } => Ok(None),
            State::Open { until } => {
                let now = Instant::now();
                if now < *until {
                    return Err(CircuitOpen {
                        service: self.service.clone(),
                        retry_after: *until - now,
                    });
                }
                tracing::info!(service = %self.service, "circuit breaker half-open: sending trial calls");
                let round = self
                    .rounds
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                *st = State::HalfOpen {
                    round,
                    issued: 1,
                    ok: 0,
                    failed: 0,
                };
                Ok(Some(Trial(round)))
            }
            State::HalfOpen { round, issued, .. } => {
                if *issued < self.policy.half_open_calls {
                    *issued += 1;
                    Ok(Some(Trial(*round)))
                } else {
                    Err(CircuitOpen {
                        service: self.service.clone(),
                        retry_after: Duration::ZERO,
                    })
                }
            }
        }
    }

    /// Records an outcome: of a call admitted while closed (`trial` none), or of a trial of
    /// the current half-open round (outcomes from before the last state change are ignored).
    fn record(&self, trial: Option<Trial>, failed: bool) {
        let p = &self.policy;
        let mut st = self.lock();
        match &mut *st {
            State::Closed { outcomes, failures } if trial.is_none() => {
                outcomes.push_back(failed);
                *failures += u32::from(failed);
                if outcomes.len() > p.window_size as usize && outcomes.pop_front() == Some(true) {
                    *failures -= 1;
                }
                let n = outcomes.len() as u32;
                if n >= p.minimum_calls
                    && f64::from(*failures) >= p.failure_rate_threshold * f64::from(n)
                {
                    tracing::warn!(service = %self.service, failures = *failures, calls = n,
                        open_for = ?p.wait_in_open, "circuit breaker opened");
                    *st = State::Open {
                        until: Instant::now() + p.wait_in_open,
                    };
                }
            }
            State::HalfOpen {
                round,
                ok,
                failed: bad,
                ..
            } if trial == Some(Trial(*round)) => {
                if failed {
                    *bad += 1;
                } else {
                    *ok += 1;
                }
                if *ok + *bad >= p.half_open_calls {
                    let rate = f64::from(*bad) / f64::from(*ok + *bad);
                    if rate >= p.failure_rate_threshold {
                        tracing::warn!(service = %self.service, failed = *bad, trials = *ok + *bad,
                            "circuit breaker re-opened after failed trials");
                        *st = State::Open {
                            until: Instant::now() + p.wait_in_open,
                        };
                    } else {
                        tracing::info!(service = %self.service, "circuit breaker closed");
                        *st = State::Closed {
                            outcomes: VecDeque::new(),
                            failures: 0,
                        };
                    }
                }
            }
            // An outcome from before the last state change: it no longer counts.
            _ => {}
        }
    }

    /// A trial call gives its place to another: it ended without an outcome, or its outcome
    /// will only be known when its response body ends (a stream must not hold the half-open
    /// breaker's few places for its whole life).
    fn release_trial(&self, trial: Trial) {
        if let State::HalfOpen { round, issued, .. } = &mut *self.lock()
            && trial == Trial(*round)
        {
            *issued = issued.saturating_sub(1);
        }
    }
}

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

fn state_of<C>(shared: &Shared<C>) -> BreakerState {
    match &*shared.lock() {
        State::Closed { .. } => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

impl<S, C> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;
    fn layer(&self, inner: S) -> Breaker<S, C> {
        Breaker {
            inner,
            shared: Some(self.shared.clone()),
        }
    }
}

/// The breaker service; see the [module docs](self). A `Breaker` built with
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

/// A call admitted by the breaker, until its outcome is recorded. Dropped unrecorded (the
/// caller gave up), a trial gives its place to another.
struct Guard<C> {
    shared: Arc<Shared<C>>,
    trial: Option<Trial>,
    recorded: bool,
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
        state: FutState<F, C, E>,
    }
}

pin_project! {
    #[project = FutProj]
    enum FutState<F, C, E> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
