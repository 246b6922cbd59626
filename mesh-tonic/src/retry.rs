//! gRPC service-config retry policies, mapped onto the mesh's retry policy.
//!
//! gRPC's service config (A6, "gRPC Retry Design") writes a method's retry policy as:
//!
//! ```json
//! { "maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
//!   "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"] }
//! ```
//!
//! [`GrpcRetryPolicy`] reads exactly that and [`to_retry_policy`](GrpcRetryPolicy::to_retry_policy)
//! maps it onto [`RetryPolicy`]:
//!
//! | gRPC field | mesh |
//! |---|---|
//! | `maxAttempts` (original call included; above 5 it is 5, as gRPC caps it) | `attempts = maxAttempts − 1` |
//! | `initialBackoff`, `maxBackoff`, `backoffMultiplier` | `backoff.base`, `backoff.max`, `backoff.multiplier` (same full-jitter formula) |
//! | `retryableStatusCodes` (names or numbers) | `retryOn.grpcStatuses` |
//!
//! Everything else keeps the mesh's defaults, in particular the **retry budget** (20 % of
//! requests plus 10 per second), which plays the part of gRPC's `retryThrottling`: retries stop
//! when they would add more load than that. gRPC's per-attempt rules hold as they are: no retry
//! after response headers arrived, none after the deadline.
//!
//! ```
//! use mesh_tonic::GrpcRetryPolicy;
//!
//! let p: GrpcRetryPolicy = serde_json::from_str(r#"{
//!     "maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "2s",
//!     "backoffMultiplier": 1.5, "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
//! }"#).unwrap();
//! let policy = p.to_retry_policy().unwrap();
//! assert_eq!(policy.attempts, 3);
//! assert_eq!(policy.retry_on.grpc_statuses, vec![14, 8]);
//! ```

use std::time::Duration;

use mesh_core::{PolicyError, retry::RetryPolicy};
use serde::{Deserialize, Serialize};

use crate::status::{code_from_name, code_name};

/// gRPC caps `maxAttempts` at 5.
pub const MAX_ATTEMPTS_CAP: u32 = 5;

/// A gRPC service-config `retryPolicy` (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRetryPolicy {
    /// Attempts including the original call; at least 2.
    pub max_attempts: u32,
    /// The first backoff bound (`"0.1s"`).
    #[serde(with = "mesh_core::duration::serde")]
    pub initial_backoff: Duration,
    /// The largest backoff bound.
    #[serde(with = "mesh_core::duration::serde")]
    pub max_backoff: Duration,
    /// Growth of the bound per retry.
    pub backoff_multiplier: f64,
    /// Codes retried: names (`"UNAVAILABLE"`) or numbers.
    pub retryable_status_codes: Vec<StatusCode>,
}

/// A gRPC status code written by name or number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StatusCode {
    /// `14`.
    Number(u16),
    /// `"UNAVAILABLE"`.
    Name(String),
}

impl GrpcRetryPolicy {
    /// The mesh retry policy this stands for; invalid values are an error naming the field
    /// (gRPC's own rules: `maxAttempts` ≥ 2, backoffs > 0, multiplier > 0, at least one code).
    pub fn to_retry_policy(&self) -> Result<RetryPolicy, PolicyError> {
        if self.max_attempts < 2 {
            return Err(PolicyError::new("maxAttempts", "must be at least 2"));
        }
        if self.initial_backoff.is_zero() {
            return Err(PolicyError::new(
                "initialBackoff",
                "must be greater than zero",
            ));
        }
        if self.max_backoff.is_zero() {
            return Err(PolicyError::new("maxBackoff", "must be greater than zero"));
        }
        if self.backoff_multiplier <= 0.0 || !self.backoff_multiplier.is_finite() {
            return Err(PolicyError::new(
                "backoffMultiplier",
                "must be greater than zero",
            ));
        }
        if self.retryable_status_codes.is_empty() {
            return Err(PolicyError::new(
                "retryableStatusCodes",
                "must not be empty",
            ));
        }
        let mut codes = Vec::with_capacity(self.retryable_status_codes.len());
        for code in &self.retryable_status_codes {
            let n = match code {
                StatusCode::Number(n) if (1..=16).contains(n) => *n,
                StatusCode::Name(name) => {
                    code_from_name(name).filter(|c| *c != 0).ok_or_else(|| {
                        PolicyError::new(
                            "retryableStatusCodes",
                            format!("{name:?} is not a gRPC status code other than OK"),
                        )
                    })?
                }
                StatusCode::Number(n) => {
                    return Err(PolicyError::new(
                        "retryableStatusCodes",
                        format!("{n} is not a gRPC status code other than OK (1 to 16)"),
                    ));
                }
            };
            if !codes.contains(&n) {
                codes.push(n);
            }
        }
        if codes.contains(&4) {
            tracing::debug!(
                code = code_name(4),
                "DEADLINE_EXCEEDED is retryable: a retry only starts while the deadline allows it"
            );
        }
        let mut policy = RetryPolicy {
            attempts: self.max_attempts.min(MAX_ATTEMPTS_CAP) - 1,
            ..RetryPolicy::default()
        };
        policy.backoff.base = self.initial_backoff;
        policy.backoff.max = self.max_backoff.max(self.initial_backoff);
        // The mesh bounds the multiplier to [1, 10]; gRPC allows any positive value, and a
        // multiplier below 1 shrinks the bound toward zero: clamp rather than refuse.
        policy.backoff.multiplier = self.backoff_multiplier.clamp(1.0, 10.0);
        policy.retry_on.grpc_statuses = codes;
        policy.validate()?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_fields_are_named() {
        let base = GrpcRetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            retryable_status_codes: vec![StatusCode::Name("unavailable".into())],
        };
        let p = base.to_retry_policy().unwrap();
        assert_eq!(p.attempts, 2);
        assert_eq!(p.retry_on.grpc_statuses, vec![14]);
        assert_eq!(p.backoff.base, Duration::from_millis(100));

        let capped = GrpcRetryPolicy {
            max_attempts: 9,
            ..base.clone()
        };
        assert_eq!(capped.to_retry_policy().unwrap().attempts, 4);

        for (bad, field) in [
            (
                GrpcRetryPolicy {
                    max_attempts: 1,
                    ..base.clone()
                },
                "maxAttempts",
            ),
            (
                GrpcRetryPolicy {
                    retryable_status_codes: vec![StatusCode::Name("OK".into())],
                    ..base.clone()
                },
                "retryableStatusCodes",
            ),
            (
                GrpcRetryPolicy {
                    retryable_status_codes: vec![StatusCode::Number(17)],
                    ..base.clone()
                },
                "retryableStatusCodes",
            ),
            (
                GrpcRetryPolicy {
                    backoff_multiplier: 0.0,
                    ..base.clone()
                },
                "backoffMultiplier",
            ),
        ] {
            assert_eq!(bad.to_retry_policy().unwrap_err().field, field);
        }
    }
}
