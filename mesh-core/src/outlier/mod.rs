//! Outlier ejection: per-endpoint circuit breaking inside the balancer.
//!
//! Every response an endpoint gives is classified ([`classify`](crate::classify)); an endpoint
//! is **ejected** from its balancer when
//!
//! - it fails `consecutiveFailures` times in a row (default 5, as Istio's
//!   `consecutive5xxErrors` and Finagle's failure accrual), or
//! - its success rate over the last `successRate.window` falls below `successRate.threshold`
//!   with at least `successRate.minRequests` requests — and the other endpoints are doing better
//!   than that threshold (if every endpoint fails alike, ejecting some only overloads the rest).
//!
//! An ejected endpoint gets no requests for `baseEjectionTime × 2^(n−1)` (n = how many times it
//! was ejected in a row, capped at `maxEjectionTime`, plus up to 10 % random jitter so endpoints
//! ejected together do not all return together). Then exactly **one probe** request is let
//! through (half-open): success re-admits it, failure ejects it again for longer. A re-admitted
//! endpoint that stays healthy for `maxEjectionTime` starts again from the base time.
//!
//! At most `maxEjectionPercent` of the endpoints (default 50 %) are ejected at once, so the
//! service stays routable; when more are failing, the rest stay in rotation and a `warn` event
//! says the service is in panic mode. If no endpoint is left to choose, the balancer chooses
//! among all of them.
//!
//! ```
//! use mesh_core::outlier::OutlierDetection;
//!
//! let od: OutlierDetection = serde_json::from_str(r#"{"consecutiveFailures": 3, "baseEjectionTime": "10s"}"#).unwrap();
//! od.validate().unwrap();
//! assert_eq!(od.max_ejection_percent, 50);
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
            Ordering::{AcqRel, Acquire, Relaxed, Release},
        },
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;

use serde::{Deserialize, Serialize};

use crate::{ServiceName, classify::ResponseClass, policy_error::PolicyError};

/// Consecutive failures that eject: 5 (Istio `consecutive5xxErrors`, Envoy `consecutive_5xx`).
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// First ejection: 30 s (Istio/Envoy `baseEjectionTime`).
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(30);
/// Longest ejection: 300 s (Envoy `max_ejection_time`).
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Share of endpoints that may be ejected at once: 50 %, so that at least half serve.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// Outlier ejection settings (Istio `DestinationRule.trafficPolicy.outlierDetection` names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Eject after this many failures in a row (`None`: never for this reason).
    pub consecutive_failures: Option<u32>,
    /// Eject when the success rate falls below a threshold (`None`: never for this reason).
    pub success_rate: Option<SuccessRate>,
    /// First ejection time; doubles with every repeated ejection.
    #[serde(with = "crate::duration::serde")]
    pub base_ejection_time: Duration,
    /// Cap on the ejection time.
    #[serde(with = "crate::duration::serde")]
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (0–100).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(DEFAULT_CONSECUTIVE_FAILURES),
            success_rate: Some(SuccessRate::default()),
            base_ejection_time: DEFAULT_BASE_EJECTION,
            max_ejection_time: DEFAULT_MAX_EJECTION,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

impl OutlierDetection {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.consecutive_failures == Some(0) {
            return Err(PolicyError::new(
                "consecutiveFailures",
                "must be at least 1",
            ));
        }
        if self.base_ejection_time.is_zero() {
            return Err(PolicyError::new(
                "baseEjectionTime",
                "must be greater than zero",
            ));
        }
        if self.max_ejection_time < self.base_ejection_time {
            return Err(PolicyError::new(
                "maxEjectionTime",
                "must not be less than baseEjectionTime",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(PolicyError::new("maxEjectionPercent", "must be 0 to 100"));
        }
        if let Some(sr) = &self.success_rate {
            sr.validate().map_err(|e| e.within("successRate"))?;
        }
        Ok(())
    }
}

/// Success-rate ejection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SuccessRate {
    /// Eject below this success rate. Default 0.8 (more than one failure in five), chosen here:
    /// there is no common default to follow (Envoy's success-rate detection is relative to the
    /// mean and off below 5 hosts; its failure-percentage detection ejects at 85 % failures).
    /// Because an endpoint is only ejected while its peers do better than the threshold, a
    /// service failing everywhere alike keeps all its endpoints.
    pub threshold: f64,
    /// Only judge endpoints with at least this many requests in the window.
    pub min_requests: u32,
    /// How far back to count (whole seconds, 1 s buckets).
    #[serde(with = "crate::duration::serde")]
    pub window: Duration,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            threshold: 0.8,
            min_requests: 20,
            window: Duration::from_secs(10),
        }
    }
}

impl SuccessRate {
    fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(PolicyError::new("threshold", "must be between 0 and 1"));
        }
        if self.min_requests == 0 {
            return Err(PolicyError::new("minRequests", "must be at least 1"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(WINDOW_BUCKETS as u64))
            .contains(&self.window)
        {
            return Err(PolicyError::new(
                "window",
                format!("must be 1s to {WINDOW_BUCKETS}s"),
            ));
        }
        Ok(())
    }
}

const WINDOW_BUCKETS: usize = 60;
const ACTIVE: u8 = 0;
const EJECTED: u8 = 1;
const PROBING: u8 = 2;
/// Left the table: its results no longer count.
const REMOVED: u8 = 3;

/// Successes and failures per second, for the last [`WINDOW_BUCKETS`] seconds.
struct Window {
    /// (second, successes, failures)
    buckets: Box<[(AtomicU64, AtomicU32, AtomicU32)]>,
}

impl Window {
    fn new() -> Self {
        Self {
            buckets: (0..WINDOW_BUCKETS)
                .map(|_| {
                    (
                        AtomicU64::new(u64::MAX),
                        AtomicU32::new(0),
                        AtomicU32::new(0),
                    )
                })
                .collect(),
        }
    }

    fn record(&self, sec: u64, ok: bool) {
        let (stamp, good, bad) = &self.buckets[(sec % WINDOW_BUCKETS as u64) as usize];
        let seen = stamp.load(Acquire);
        if seen != sec && stamp.compare_exchange(seen, sec, AcqRel, Acquire).is_ok() {
            good.store(0, Relaxed);
            bad.store(0, Relaxed);
        }
        if ok {
            good.fetch_add(1, Relaxed);
        } else {
            bad.fetch_add(1, Relaxed);
        }
    }

    /// (successes, failures) over the last `secs` seconds up to `now_sec`.
    fn totals(&self, now_sec: u64, secs: u64) -> (u64, u64) {
        let mut total = (0, 0);
        for (stamp, good, bad) in self.buckets.iter() {
            let s = stamp.load(Acquire);
            if s != u64::MAX && s <= now_sec && now_sec - s < secs {
                total.0 += u64::from(good.load(Relaxed));
                total.1 += u64::from(bad.load(Relaxed));
            }
        }
        total
    }

    fn clear(&self) {
        for (stamp, _, _) in self.buckets.iter() {
            stamp.store(u64::MAX, Relaxed);
        }
    }
}

/// The health of one endpoint, shared between the generations of a balancer's table.
pub(crate) struct Health {
    state: AtomicU8,
    consecutive: AtomicU32,
    window: Window,
    ejected_until_ns: AtomicU64,
    ejections: AtomicU32,
    readmitted_at_ns: AtomicU64,
    /// Ejections (first ones and failed probes) and re-admissions since the endpoint appeared.
    ejections_total: AtomicU64,
    readmissions_total: AtomicU64,
    /// Responses since the endpoint appeared: (successes, endpoint failures).
    responses: [AtomicU64; 2],
}

/// What one endpoint's health looks like from outside (debug snapshot, tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthState {
    /// In rotation.
    Active,
    /// Out of rotation until the given time.
    Ejected,
    /// One probe request is deciding.
    Probing,
}

impl Health {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(ACTIVE),
            consecutive: AtomicU32::new(0),
            window: Window::new(),
            ejected_until_ns: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            readmitted_at_ns: AtomicU64::new(0),
            ejections_total: AtomicU64::new(0),
            readmissions_total: AtomicU64::new(0),
            responses: Default::default(),
        }
    }

    /// Responses of this endpoint so far: (successes, endpoint failures).
    pub(crate) fn responses(&self) -> (u64, u64) {
        (
            self.responses[0].load(Relaxed),
            self.responses[1].load(Relaxed),
        )
    }

    /// Ejections and re-admissions of this endpoint so far.
    pub(crate) fn transitions(&self) -> (u64, u64) {
        (
            self.ejections_total.load(Relaxed),
            self.readmissions_total.load(Relaxed),
        )
    }

    pub(crate) fn state(&self) -> HealthState {
        match self.state.load(Acquire) {
            ACTIVE | REMOVED => HealthState::Active,
            EJECTED => HealthState::Ejected,
            _ => HealthState::Probing,
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.state.load(Acquire) == ACTIVE
    }

    /// When an ejected endpoint may be probed (ns since the balancer's epoch).
    pub(crate) fn ejected_until_ns(&self) -> u64 {
        self.ejected_until_ns.load(Acquire)
    }

    /// Claims the single probe of an ejected endpoint whose ejection time is over.
    pub(crate) fn try_probe(&self, now_ns: u64) -> bool {
        self.state.load(Acquire) == EJECTED
            && now_ns >= self.ejected_until_ns.load(Acquire)
            && self
                .state
                .compare_exchange(EJECTED, PROBING, AcqRel, Acquire)
                .is_ok()
    }
}

/// The outlier detector of one balancer.
pub(crate) struct Outlier {
    pub(crate) config: Option<OutlierDetection>,
    service: ServiceName,
    epoch: Instant,
    /// Endpoints currently ejected or probing.
    ejected: AtomicUsize,
    /// Health of the endpoints in the current table (for peer comparisons and the limit).
    table: ArcSwap<Vec<Arc<Health>>>,
    panic_logged: AtomicBool,
}

impl Outlier {
    pub(crate) fn new(
        service: ServiceName,
        config: Option<OutlierDetection>,
        epoch: Instant,
    ) -> Self {
        Self {
            config,
            service,
            epoch,
            ejected: AtomicUsize::new(0),
            table: ArcSwap::from_pointee(Vec::new()),
            panic_logged: AtomicBool::new(false),
        }
    }

    /// Whether any endpoint is out of rotation (the balancer's fast path skips all checks when not).
    pub(crate) fn any_ejected(&self) -> bool {
        self.ejected.load(Relaxed) > 0
    }

    /// The endpoints now in the table.
    pub(crate) fn set_table(&self, healths: Vec<Arc<Health>>) {
        self.table.store(Arc::new(healths));
    }

    /// An endpoint left the table: it no longer counts as ejected, and results of requests
    /// still in flight to it are ignored.
    pub(crate) fn forget(&self, health: &Health) {
        let was = health.state.swap(REMOVED, AcqRel);
        if was == EJECTED || was == PROBING {
            self.ejected.fetch_sub(1, Relaxed);
        }
    }

    /// The balancer found no endpoint in rotation and chose among all of them.
    pub(crate) fn panic_pick(&self) {
        if !self.panic_logged.swap(true, Relaxed) {
            tracing::warn!(service = %self.service,
                "panic mode: no endpoint in rotation, balancing over all endpoints including ejected ones");
        }
    }

    /// Folds one result of `addr` into its health; may eject or re-admit it.
    pub(crate) fn record(
        &self,
        addr: SocketAddr,
        health: &Health,
        class: ResponseClass,
        now: Instant,
    ) {
        let ok = !class.is_endpoint_failure();
        health.responses[usize::from(!ok)].fetch_add(1, Relaxed);
        let Some(cfg) = &self.config else { return };
        if health.state.load(Acquire) == REMOVED {
            return;
        }
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let sec = now_ns / 1_000_000_000;
        health.window.record(sec, ok);
        if ok {
            if health.consecutive.load(Relaxed) != 0 {
                health.consecutive.store(0, Relaxed);
            }
            if health.state.load(Acquire) == PROBING
                && health
                    .state
                    .compare_exchange(PROBING, ACTIVE, AcqRel, Acquire)
                    .is_ok()
            {
                self.ejected.fetch_sub(1, Relaxed);
                health.readmitted_at_ns.store(now_ns, Relaxed);
                health.readmissions_total.fetch_add(1, Relaxed);
                health.window.clear();
                self.panic_logged.store(false, Relaxed);
                tracing::info!(service = %self.service, endpoint = %addr, "endpoint re-admitted after a successful probe");
            }
            return;
        }
        let consecutive = health.consecutive.fetch_add(1, Relaxed) + 1;
        match health.state.load(Acquire) {
            PROBING
                if health
                    .state
                    .compare_exchange(PROBING, EJECTED, AcqRel, Acquire)
                    .is_ok() =>
            {
                let until = self.eject_for(cfg, health, now_ns);
                tracing::warn!(service = %self.service, endpoint = %addr, ?class,
                    ejected_for = ?Duration::from_nanos(until - now_ns), "probe failed; endpoint ejected again");
            }
            ACTIVE => {
                let by_count = cfg.consecutive_failures.is_some_and(|n| consecutive >= n);
                let by_rate = !by_count && self.rate_says_eject(cfg, health, sec);
                if by_count || by_rate {
                    self.try_eject(
                        cfg,
                        addr,
                        health,
                        now_ns,
                        if by_count {
                            "consecutive failures"
                        } else {
                            "success rate"
                        },
                    );
                }
            }
            _ => {}
        }
    }

    /// A probe request ended without a result (cancelled): count it as a failed probe, so a
    /// hanging endpoint is not probed by every request.
    pub(crate) fn probe_abandoned(&self, addr: SocketAddr, health: &Health) {
        let Some(cfg) = &self.config else { return };
        if health
            .state
            .compare_exchange(PROBING, EJECTED, AcqRel, Acquire)
            .is_ok()
        {
            let now_ns = self.epoch.elapsed().as_nanos() as u64;
            self.eject_for(cfg, health, now_ns);
            tracing::warn!(service = %self.service, endpoint = %addr, "probe abandoned; endpoint stays ejected");
        }
    }

    fn rate_says_eject(&self, cfg: &OutlierDetection, health: &Health, sec: u64) -> bool {
        let Some(sr) = &cfg.success_rate else {
            return false;
        };
        let secs = sr.window.as_secs().max(1);
        let (good, bad) = health.window.totals(sec, secs);
        let total = good + bad;
        if total < u64::from(sr.min_requests) || (good as f64) >= sr.threshold * total as f64 {
            return false;
        }
        // Only an outlier if its peers do better than the threshold.
        let (pg, pt) = self
            .table
            .load()
            .iter()
            .filter(|h| !std::ptr::eq(h.as_ref(), health))
            .map(|h| h.window.totals(sec, secs))
            .fold((0u64, 0u64), |(g, t), (pg, pb)| (g + pg, t + pg + pb));
        pt > 0 && (pg as f64) >= sr.threshold * pt as f64
    }

    fn try_eject(
        &self,
        cfg: &OutlierDetection,
        addr: SocketAddr,
        health: &Health,
        now_ns: u64,
        reason: &str,
    ) {
        let n = self.table.load().len();
        let allowed = n * cfg.max_ejection_percent as usize / 100;
        let ejected = self.ejected.load(Relaxed);
        if ejected >= allowed {
            if !self.panic_logged.swap(true, Relaxed) {
                tracing::warn!(service = %self.service, endpoint = %addr, ejected, endpoints = n,
                    max_ejection_percent = cfg.max_ejection_percent,
                    "panic mode: endpoint failing but the ejection limit is reached; it stays in rotation");
            }
            return;
        }
        if health
            .state
            .compare_exchange(ACTIVE, EJECTED, AcqRel, Acquire)
            .is_ok()
        {
            self.ejected.fetch_add(1, Relaxed);
            let until = self.eject_for(cfg, health, now_ns);
            tracing::warn!(service = %self.service, endpoint = %addr, reason,
                ejected_for = ?Duration::from_nanos(until - now_ns), "endpoint ejected");
        }
    }

    /// Sets the ejection time of a newly (re-)ejected endpoint; returns its end.
    fn eject_for(&self, cfg: &OutlierDetection, health: &Health, now_ns: u64) -> u64 {
        let readmitted = health.readmitted_at_ns.load(Relaxed);
        if readmitted != 0
            && now_ns.saturating_sub(readmitted) >= cfg.max_ejection_time.as_nanos() as u64
        {
            health.ejections.store(0, Relaxed);
        }
        let n = health.ejections.fetch_add(1, Relaxed) + 1;
        health.ejections_total.fetch_add(1, Relaxed);
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        let base = cfg
            .base_ejection_time
            .saturating_mul(factor)
            .min(cfg.max_ejection_time);
        let jitter = Duration::from_nanos(fastrand::u64(..=(base.as_nanos() / 10) as u64));
        let until = now_ns + (base + jitter).as_nanos() as u64;
        health.ejected_until_ns.store(until, Release);
        health.consecutive.store(0, Relaxed);
        health.window.clear();
        until
    }

    /// Success/failure totals of one endpoint over the success-rate window.
    pub(crate) fn window_totals(&self, health: &Health) -> (u64, u64) {
        let secs = self
            .config
            .as_ref()
            .and_then(|c| c.success_rate.as_ref())
            .map(|s| s.window.as_secs().max(1))
            .unwrap_or(10);
        let sec = self.epoch.elapsed().as_secs();
        health.window.totals(sec, secs)
    }
}

#[cfg(test)]
mod tests;
