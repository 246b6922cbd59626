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

    /// Whether this is a failure that counts against the endpoint (see
    /// [`FailureKind::is_endpoint_fault`]): what outlier ejection, load estimates and circuit
    /// breakers look at.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(self, ResponseClass::Failure(k) if k.is_endpoint_fault())
    }
}

/// Kinds of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection could be made (refused, unreachable, connect timeout, TLS handshake).
    /// The server never saw the request.
    Connect,
    /// The endpoint's TLS identity is not the one expected for it (an mTLS peer proving another
    /// SPIFFE ID). The server never saw the request; it counts against the endpoint, but it is
    /// never retried: a mismatch is a misconfiguration or an impostor, not a passing fault, and
    /// the same endpoint answers the same way (outlier detection takes it out of rotation).
    Identity,
    /// The server refused the request before processing it (HTTP/2 `REFUSED_STREAM`, or a
    /// `GOAWAY` that did not cover the stream). Safe to retry whatever the method.
    Refused,
    /// No endpoint was available; nothing was sent.
    NoEndpoints,
    /// Refused locally (load shed, rate limited, circuit open); nothing was sent.
    Local,
    /// The request timed out; the server may have processed it.
    Timeout,
    /// The connection closed or was reset after the request was sent and before any response
    /// head arrived (a backend that crashed, or accepts and closes); the server may have
    /// processed it. Envoy's `reset`: retried for idempotent requests.
    Reset,
    /// The server answered with a failing HTTP status (5xx).
    Status(u16),
    /// The server answered with a gRPC status other than `OK` (the code, 1 to 16), in the
    /// response headers (a trailers-only response) or in its trailers.
    Grpc(u16),
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
                | FailureKind::Identity
                | FailureKind::Refused
                | FailureKind::NoEndpoints
                | FailureKind::Local
        )
    }
}

/// gRPC codes that count against the endpoint that answered them (outlier ejection, load
/// estimate, circuit breaking): those Envoy maps to a 5xx status — `UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`. The others (`INVALID_ARGUMENT`,
/// `NOT_FOUND`, `PERMISSION_DENIED`, ...) describe the request, not the server's health.
pub const GRPC_ENDPOINT_FAULTS: [u16; 6] = [2, 4, 12, 13, 14, 15];

impl FailureKind {
    /// Whether this failure says something about the endpoint's health: everything except gRPC
    /// statuses that describe the request (see [`GRPC_ENDPOINT_FAULTS`]).
    pub fn is_endpoint_fault(&self) -> bool {
        match self {
            FailureKind::Grpc(code) => GRPC_ENDPOINT_FAULTS.contains(code),
            _ => true,
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Connect => f.write_str("connect failure"),
            FailureKind::Identity => f.write_str("identity mismatch"),
            FailureKind::Refused => f.write_str("refused before processing"),
            FailureKind::NoEndpoints => f.write_str("no endpoints"),
            FailureKind::Local => f.write_str("refused locally"),
            FailureKind::Timeout => f.write_str("timeout"),
            FailureKind::Status(s) => write!(f, "status {s}"),
            FailureKind::Grpc(c) => write!(f, "grpc-status {c}"),
            FailureKind::Reset => f.write_str("connection reset before a response"),
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

    /// For a response whose outcome is only known when its body ends (a gRPC response with
    /// headers: its status comes in the trailers), stores `outcome()` in it (with
    /// [`LateOutcome::attach`], so that every layer that defers — the balancer's outlier
    /// detection, the service breaker — hears the final class) and returns `true`; the protocol
    /// crate reports the final class through it. The default (`false`): the class of the
    /// response head is final.
    fn defer_outcome(&self, _response: &mut T, _outcome: &mut dyn FnMut() -> LateOutcome) -> bool {
        false
    }
}

/// Receives the final class of a response whose outcome was deferred (see [`LateOutcome`]).
pub trait Report: Send + Sync + 'static {
    /// The final class, or `None` when the response was abandoned before its end. Called at
    /// most once.
    fn report(&self, class: Option<ResponseClass>);
}

/// The outcome of a response, reported when its body ends: a balancer hands one to the
/// protocol crate (in the response's extensions) for responses whose class the head does not
/// decide, and the protocol crate calls [`report`](LateOutcome::report) once the status is
/// known (trailers). Only the first report counts, whichever clone makes it. When the last clone
/// is dropped unreported (the caller gave up reading the body), the report runs with `None`.
/// One allocation per outcome.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use mesh_core::classify::{FailureKind, LateOutcome, ResponseClass};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let outcome = LateOutcome::new(move |class| log.lock().unwrap().push(class));
/// outcome.clone().report(ResponseClass::Failure(FailureKind::Grpc(14)));
/// outcome.report(ResponseClass::Success); // ignored: already reported
/// drop(outcome);
/// assert_eq!(*seen.lock().unwrap(), vec![Some(ResponseClass::Failure(FailureKind::Grpc(14)))]);
///
/// // Two layers attach theirs to one response; the body's report reaches both.
/// let (a, b) = (Arc::new(Mutex::new(None)), Arc::new(Mutex::new(None)));
/// let mut ext = http::Extensions::new();
/// let (la, lb) = (a.clone(), b.clone());
/// LateOutcome::new(move |c| *la.lock().unwrap() = Some(c)).attach(&mut ext);
/// LateOutcome::new(move |c| *lb.lock().unwrap() = Some(c)).attach(&mut ext);
/// ext.remove::<LateOutcome>().unwrap().report(ResponseClass::Success);
/// assert_eq!(*a.lock().unwrap(), Some(Some(ResponseClass::Success)));
/// assert_eq!(*b.lock().unwrap(), Some(Some(ResponseClass::Success)));
/// ```
#[derive(Clone)]
pub struct LateOutcome(std::sync::Arc<Once<dyn Report>>);

/// A report made at most once.
struct Once<R: Report + ?Sized> {
    done: std::sync::atomic::AtomicBool,
    report: R,
}

impl<R: Report + ?Sized> Once<R> {
    fn fire(&self, class: Option<ResponseClass>) {
        if !self.done.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.report.report(class);
        }
    }
}

impl<R: Report + ?Sized> Drop for Once<R> {
    fn drop(&mut self) {
        self.fire(None);
    }
}

/// A [`Report`] made of a closure.
struct FnReport<F>(std::sync::Mutex<Option<F>>);

impl<F: FnOnce(Option<ResponseClass>) + Send + 'static> Report for FnReport<F> {
    fn report(&self, class: Option<ResponseClass>) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f(class);
        }
    }
}

impl LateOutcome {
    /// An outcome that runs `report` once: with the final class, or `None` if abandoned.
    pub fn new(report: impl FnOnce(Option<ResponseClass>) + Send + 'static) -> Self {
        Self::from_report(FnReport(std::sync::Mutex::new(Some(report))))
    }

    /// An outcome delivered to `report`.
    pub fn from_report(report: impl Report) -> Self {
        Self(std::sync::Arc::new(Once {
            done: std::sync::atomic::AtomicBool::new(false),
            report,
        }))
    }

    /// Reports the final class (only the first report counts).
    pub fn report(&self, class: ResponseClass) {
        self.0.fire(Some(class));
    }

    /// One outcome that reports to both: the final class to each, or, when abandoned, `None`
    /// to each (they are dropped with it).
    pub fn join(self, other: LateOutcome) -> LateOutcome {
        struct Both(LateOutcome, LateOutcome);
        impl Report for Both {
            fn report(&self, class: Option<ResponseClass>) {
                if let Some(class) = class {
                    self.0.report(class);
                    self.1.report(class);
                }
            }
        }
        Self::from_report(Both(self, other))
    }

    /// Stores this outcome in a response's extensions, joined with one a lower layer already
    /// stored there (replacing it would report that one as abandoned).
    pub fn attach(self, extensions: &mut http::Extensions) {
        let joined = match extensions.remove::<LateOutcome>() {
            Some(earlier) => earlier.join(self),
            None => self,
        };
        extensions.insert(joined);
    }
}

impl fmt::Debug for LateOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LateOutcome")
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

    fn defer_outcome(&self, response: &mut T, outcome: &mut dyn FnMut() -> LateOutcome) -> bool {
        (**self).defer_outcome(response, outcome)
    }
}
