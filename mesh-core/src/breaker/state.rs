//! The breaker's state machine, shared by the layer, its services and their futures.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::{BreakerPolicy, BreakerState, CircuitOpen};
use crate::ServiceName;

pub(super) enum State {
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
pub(super) struct Trial(u64);

pub(super) struct Shared<C> {
    pub(super) service: ServiceName,
    pub(super) policy: BreakerPolicy,
    pub(super) state: Mutex<State>,
    /// Half-open periods so far (numbers them).
    pub(super) rounds: std::sync::atomic::AtomicU64,
    pub(super) classifier: C,
}

impl<C> Shared<C> {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call (returning the trial it is, when half-open) or refuses it.
    pub(super) fn admit(&self) -> Result<Option<Trial>, CircuitOpen> {
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
    pub(super) fn record(&self, trial: Option<Trial>, failed: bool) {
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
    pub(super) fn release_trial(&self, trial: Trial) {
        if let State::HalfOpen { round, issued, .. } = &mut *self.lock()
            && trial == Trial(*round)
        {
            *issued = issued.saturating_sub(1);
        }
    }
}

pub(super) fn state_of<C>(shared: &Shared<C>) -> BreakerState {
    match &*shared.lock() {
        State::Closed { .. } => BreakerState::Closed,
        State::Open { .. } => BreakerState::Open,
        State::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}
