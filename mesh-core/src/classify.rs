//! Response classification: is this result a success, and if not, what kind of failure?
//!
//! Resilience layers (retries, outlier ejection, circuit breakers) decide from a
//! [`ResponseClass`], never from protocol types: mesh-hyper classifies HTTP statuses and hyper
//! errors, mesh-tonic classifies `grpc-status`. That keeps every policy in this crate
//! protocol-agnostic.
//!
//! ```
//! use mesh_core::classify::{Classify, FailureKind, ResponseClass};
//!
//! /// Classifies plain status codes: 5xx fail.
//! struct Codes;
//! impl Classify<u16, ()> for Codes {
//!     fn classify(&self, result: Result<&u16, &()>) -> ResponseClass {
//!         match result {
//!             Ok(s) if *s >= 500 => ResponseClass::Failure(FailureKind::Status(*s)),
//!             Ok(_) => ResponseClass::Success,
//!             Err(()) => ResponseClass::Failure(FailureKind::Other),
//!         }
//!     }
//! }
//! assert!(Codes.classify(Ok(&503)).is_failure());
//! assert!(!FailureKind::Status(503).is_unprocessed());
//! assert!(FailureKind::Connect.is_unprocessed());
//! ```

use std::fmt;

/// The outcome of one request as resilience layers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseClass {
    /// The request succeeded.
    Success,
    /// The request failed.
    Failure(FailureKind),
}

impl ResponseClass {
    /// Whether this is a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, ResponseClass::Failure(_))
    }
}

/// Kinds of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection could be made (refused, unreachable, connect timeout, TLS handshake).
    /// The server never saw the request.
    Connect,
    /// The server refused the request before processing it (HTTP/2 `REFUSED_STREAM`, or a
    /// `GOAWAY` that did not cover the stream). Safe to retry whatever the method.
    Refused,
    /// No endpoint was available; nothing was sent.
    NoEndpoints,
    /// Refused locally (load shed, rate limited, circuit open); nothing was sent.
    Local,
    /// The request timed out; the server may have processed it.
    Timeout,
    /// The server answered with a failure status (HTTP status code, or gRPC status code).
    Status(u16),
    /// The connection failed mid-request, or any other error; the server may have processed it.
    Other,
}

impl FailureKind {
    /// Whether the request certainly never reached the application: retrying cannot run it
    /// twice, so even non-idempotent requests may be retried.
    pub fn is_unprocessed(&self) -> bool {
        matches!(
            self,
            FailureKind::Connect
                | FailureKind::Refused
                | FailureKind::NoEndpoints
                | FailureKind::Local
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Connect => f.write_str("connect failure"),
            FailureKind::Refused => f.write_str("refused before processing"),
            FailureKind::NoEndpoints => f.write_str("no endpoints"),
            FailureKind::Local => f.write_str("refused locally"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Status(s) => write!(f, "status {s}"),
            FailureKind::Other => f.write_str("request failure"),
        }
    }
}

/// Classifies a service's results. Implemented per protocol.
pub trait Classify<T, E> {
    /// The class of one result.
    fn classify(&self, result: Result<&T, &E>) -> ResponseClass;

    /// The endpoint that produced a failed result, when the protocol records it (errors naming
    /// their endpoint, a marker on failed responses). Retries use it to go elsewhere.
    fn endpoint(&self, _result: Result<&T, &E>) -> Option<std::net::SocketAddr> {
        None
    }
}

/// Put in the extensions of a failed response by protocol crates: which endpoint answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedBy(pub std::net::SocketAddr);

/// The default classifier where a protocol gives none: every error is a failure
/// ([`FailureKind::Other`]), every response a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsFail;

impl<T, E> Classify<T, E> for ErrorsFail {
    fn classify(&self, result: Result<&T, &E>) -> ResponseClass {
        match result {
            Ok(_) => ResponseClass::Success,
            Err(_) => ResponseClass::Failure(FailureKind::Other),
        }
    }
}

impl<T, E, C: Classify<T, E>> Classify<T, E> for std::sync::Arc<C> {
    fn classify(&self, result: Result<&T, &E>) -> ResponseClass {
        (**self).classify(result)
    }

    fn endpoint(&self, result: Result<&T, &E>) -> Option<std::net::SocketAddr> {
        (**self).endpoint(result)
    }
}
