//! Retry, backoff, budget and hedging policies as configuration data.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy_error::PolicyError;

/// Retries after the first attempt: 2, Istio's default (`HTTPRetry.attempts`).
pub const DEFAULT_RETRIES: u32 = 2;
/// Statuses retried by default: 502, 503, 504 — Envoy's `retriable-status-codes` set that
/// Istio's default `retryOn` (`gateway-error`) stands for.
pub const DEFAULT_RETRY_STATUSES: [u16; 3] = [502, 503, 504];
/// gRPC statuses retried by default: `UNAVAILABLE` (14) only — gRPC's own guidance: the one
/// code that says the call was not processed. `DEADLINE_EXCEEDED`, `INVALID_ARGUMENT` and the
/// like are never retried unless listed.
pub const DEFAULT_RETRY_GRPC_STATUSES: [u16; 1] = [14];
/// Backoff growth per retry: 2 (Envoy's and gRPC's usual `backoffMultiplier`).
pub const DEFAULT_BACKOFF_MULTIPLIER: f64 = 2.0;
/// First backoff: 25 ms, Envoy's `base_interval` default.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Largest backoff: 250 ms, Envoy's `max_interval` default (10 × base).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// Largest request body kept for replay: 64 KiB, linkerd2-proxy's retry body limit.
pub const DEFAULT_MAX_REPLAY_BYTES: usize = 64 * 1024;
/// Budget: retries may add 20 % to the request rate (Linkerd's and Finagle's default)...
pub const DEFAULT_BUDGET_RATIO: f32 = 0.2;
/// ...plus 10 retries per second whatever the rate (Linkerd/Finagle `minRetriesPerSecond`)...
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// ...counted over a 10 s window (Linkerd/Finagle `ttl`).
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Retries in flight at once per destination: a burst guard behind the budget (Envoy's
/// circuit-breaker `max_retries` is 3 per cluster, sized for a proxy shared by many callers;
/// here one client owns the destination and the budget already bounds the retry rate).
pub const DEFAULT_MAX_CONCURRENT_RETRIES: u32 = 256;

/// When and how often to retry. Serde form (camelCase), every field optional:
///
/// ```yaml
/// attempts: 2                 # retries after the first try
/// perTryTimeout: 500ms
/// retryOn: { statuses: [502, 503, 504], grpcStatuses: [14], connectFailure: true, refusedStream: true, perTryTimeout: true }
/// backoff: { base: 25ms, max: 250ms, multiplier: 2 }
/// retryNonIdempotent: false
/// maxReplayBytes: 65536
/// hedge: { percentile: 0.95, minSamples: 100, window: 10s }   # off unless present
/// ```
///
/// This is route-level policy (Istio's `HTTPRetry`, on a VirtualService route); the retry
/// budget that bounds how much retries may add is destination-level ([`BudgetPolicy`]), shared
/// by every route to the destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retries; the budget still counts requests).
    pub attempts: u32,
    /// Timeout of each attempt; a timed-out attempt may be retried (idempotent requests only).
    #[serde(with = "crate::duration::serde_opt")]
    pub per_try_timeout: Option<Duration>,
    /// Which failures are retried.
    pub retry_on: RetryOn,
    /// Wait between attempts.
    pub backoff: Backoff,
    /// Retry non-idempotent methods (POST, PATCH) on statuses and timeouts too. Off by
    /// default: the server may have acted on them. Failures where the request certainly never
    /// reached the server (connect failure, refused stream) are retried for every method.
    pub retry_non_idempotent: bool,
    /// Bodies up to this size are kept to be replayed; bigger bodies are sent once.
    pub max_replay_bytes: usize,
    /// Send a second request when the first is slow (off by default).
    pub hedge: Option<HedgePolicy>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_RETRIES,
            per_try_timeout: None,
            retry_on: RetryOn::default(),
            backoff: Backoff::default(),
            retry_non_idempotent: false,
            max_replay_bytes: DEFAULT_MAX_REPLAY_BYTES,
            hedge: None,
        }
    }
}

impl RetryPolicy {
    /// No retries (requests still pass through; useful to switch retries off per service).
    pub fn disabled() -> Self {
        Self {
            attempts: 0,
            ..Self::default()
        }
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.attempts > 10 {
            return Err(PolicyError::new("attempts", "at most 10 retries"));
        }
        if self.per_try_timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::new(
                "perTryTimeout",
                "must be greater than zero",
            ));
        }
        if let Some(s) = self
            .retry_on
            .statuses
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(PolicyError::new(
                "retryOn.statuses",
                format!("{s} is not an HTTP status code"),
            ));
        }
        if let Some(c) = self
            .retry_on
            .grpc_statuses
            .iter()
            .find(|c| !(1..=16).contains(*c))
        {
            return Err(PolicyError::new(
                "retryOn.grpcStatuses",
                format!("{c} is not a gRPC status code other than OK (1 to 16)"),
            ));
        }
        self.backoff.validate().map_err(|e| e.within("backoff"))?;
        if let Some(h) = &self.hedge {
            h.validate().map_err(|e| e.within("hedge"))?;
        }
        Ok(())
    }
}

/// Which failures are retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryOn {
    /// Response statuses retried (idempotent requests only, unless `retryNonIdempotent`).
    pub statuses: Vec<u16>,
    /// gRPC statuses retried (codes 1 to 16), for every call: gRPC's retry semantics, where the
    /// listed codes are declared safe to retry. Default `[14]` (`UNAVAILABLE`).
    pub grpc_statuses: Vec<u16>,
    /// Connection could not be made (never reached the server).
    pub connect_failure: bool,
    /// HTTP/2 `REFUSED_STREAM`, or a `GOAWAY` that did not cover the stream.
    pub refused_stream: bool,
    /// The per-try timeout fired.
    pub per_try_timeout: bool,
    /// The connection closed or was reset before a response head (idempotent requests only,
    /// unless `retryNonIdempotent`): Envoy's `reset`, part of its `5xx`.
    pub reset: bool,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            statuses: DEFAULT_RETRY_STATUSES.to_vec(),
            grpc_statuses: DEFAULT_RETRY_GRPC_STATUSES.to_vec(),
            connect_failure: true,
            refused_stream: true,
            per_try_timeout: true,
            reset: true,
        }
    }
}

/// Exponential backoff with full jitter: before retry `n` (1-based) wait a random time in
/// `[0, min(max, base × multiplier^(n−1))]` (AWS Architecture Blog, "Exponential Backoff And
/// Jitter": full jitter spreads retries of many clients best; gRPC's retry design uses the
/// same formula).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The first retry's upper bound.
    #[serde(with = "crate::duration::serde")]
    pub base: Duration,
    /// The upper bound never exceeds this.
    #[serde(with = "crate::duration::serde")]
    pub max: Duration,
    /// Growth of the bound per retry (1 to 10; default 2).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: DEFAULT_BACKOFF_BASE,
            max: DEFAULT_BACKOFF_MAX,
            multiplier: DEFAULT_BACKOFF_MULTIPLIER,
        }
    }
}

impl Backoff {
    /// The upper bound before retry `n` (1-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.powi(exp);
        // Saturate rather than overflow: the cap applies anyway.
        let bound = self.base.as_secs_f64() * factor;
        if !bound.is_finite() || bound >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::from_secs_f64(bound).min(self.max)
    }

    /// A random wait before retry `n`.
    pub fn delay(&self, n: u32) -> Duration {
        let ceiling = self.ceiling(n);
        if ceiling.is_zero() {
            return ceiling;
        }
        Duration::from_nanos(fastrand::u64(
            ..=ceiling.as_nanos().min(u128::from(u64::MAX)) as u64,
        ))
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if self.max < self.base {
            return Err(PolicyError::new("max", "must not be less than base"));
        }
        if !(1.0..=10.0).contains(&self.multiplier) {
            return Err(PolicyError::new("multiplier", "must be between 1 and 10"));
        }
        Ok(())
    }
}

/// The retry budget of a destination, shared by all its routes: retries may add `ratio` of the
/// requests seen in the last `ttl`, plus `minPerSecond` retries per second (so a quiet client
/// can still retry), with at most `maxConcurrent` retries in flight at once (Istio's
/// DestinationRule `connectionPool.http.maxRetries`). Exhausted, a failure is returned as it
/// is. Hedges draw on the same budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BudgetPolicy {
    /// Retries per request allowed on top of the reserve (0.2 = 20 %).
    pub ratio: f32,
    /// Retries per second always allowed.
    pub min_per_second: u32,
    /// How long a request counts toward the budget (1 s to 60 s).
    #[serde(with = "crate::duration::serde")]
    pub ttl: Duration,
    /// Retries (and hedges) in flight at once; beyond it a failure is returned as is.
    pub max_concurrent: u32,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            ratio: DEFAULT_BUDGET_RATIO,
            min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            ttl: DEFAULT_BUDGET_TTL,
            max_concurrent: DEFAULT_MAX_CONCURRENT_RETRIES,
        }
    }
}

impl BudgetPolicy {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err(PolicyError::new("ratio", "must be between 0 and 10"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(PolicyError::new("ttl", "must be between 1s and 60s"));
        }
        if self.min_per_second > 1_000_000 {
            return Err(PolicyError::new("minPerSecond", "at most 1000000"));
        }
        Ok(())
    }
}

/// Hedging: when an attempt has not answered within the `percentile` latency of recent
/// successful attempts, send a second one (to another endpoint) and take whichever answers
/// first. Idempotent requests with a replayable body only; each hedge spends retry budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HedgePolicy {
    /// Latency percentile after which to hedge (0.95: the slowest 5 % get a second chance).
    pub percentile: f64,
    /// No hedging until this many latencies are known.
    pub min_samples: u64,
    /// Latencies are remembered for this long (two rotating halves).
    #[serde(with = "crate::duration::serde")]
    pub window: Duration,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            percentile: 0.95,
            min_samples: 100,
            window: Duration::from_secs(10),
        }
    }
}

impl HedgePolicy {
    fn validate(&self) -> Result<(), PolicyError> {
        if !(0.5..1.0).contains(&self.percentile) {
            return Err(PolicyError::new("percentile", "must be in [0.5, 1)"));
        }
        if self.window < Duration::from_millis(100) {
            return Err(PolicyError::new("window", "at least 100ms"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_from_an_empty_document() {
        let p: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RetryPolicy::default());
        p.validate().unwrap();
        assert_eq!(p.retry_on.statuses, vec![502, 503, 504]);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let p: RetryPolicy =
            serde_json::from_str(r#"{"backoff": {"base": "1s", "max": "10ms"}}"#).unwrap();
        let e = p.validate().unwrap_err();
        assert_eq!(e.field, "backoff.max");
        let b: BudgetPolicy = serde_json::from_str(r#"{"ttl": "2m"}"#).unwrap();
        assert_eq!(b.validate().unwrap_err().field, "ttl");
        let p: RetryPolicy = serde_json::from_str(r#"{"retryOn": {"statuses": [700]}}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "retryOn.statuses");
        let p: RetryPolicy = serde_json::from_str(r#"{"retryOn": {"grpcStatuses": [0]}}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "retryOn.grpcStatuses");
        let p: RetryPolicy = serde_json::from_str(r#"{"backoff": {"multiplier": 0.5}}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "backoff.multiplier");
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"atempts": 3}"#).is_err());
    }

    #[test]
    fn backoff_grows_exponentially_to_its_cap_with_full_jitter() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(1), Duration::from_millis(25));
        assert_eq!(b.ceiling(2), Duration::from_millis(50));
        assert_eq!(b.ceiling(4), Duration::from_millis(200));
        assert_eq!(b.ceiling(5), Duration::from_millis(250));
        assert_eq!(b.ceiling(40), Duration::from_millis(250));
        for n in 1..6 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
        let b = Backoff {
            multiplier: 1.5,
            max: Duration::from_secs(1),
            ..b
        };
        assert_eq!(b.ceiling(3), Duration::from_micros(56_250));
    }
}
