//! HTTP classification: which responses and errors count as failures, and of what kind.
//!
//! [`HttpClassifier`] implements mesh-core's [`Classify`] for the meshed client's results:
//!
//! | result | class |
//! |---|---|
//! | status < 500 | success (a 4xx is the caller's problem, not the endpoint's) |
//! | status ≥ 500 | `Failure(Status(code))` |
//! | connect error (refused, unreachable, connect timeout), or a connection that closed before the request could be written (hyper's `Canceled`) | `Failure(Connect)` — never reached the server |
//! | the endpoint proved another SPIFFE identity | `Failure(Identity)` — never retried |
//! | HTTP/2 `REFUSED_STREAM` | `Failure(Refused)` — never processed |
//! | HTTP/2 `GOAWAY` (graceful) before the stream was processed | `Failure(Refused)` |
//! | the connection closed or was reset before the response head (HTTP/1.1 message cut short, TCP reset, HTTP/2 connection lost or stream reset) | `Failure(Reset)` — retried for idempotent requests |
//! | no endpoints | `Failure(NoEndpoints)` |
//! | timeout (request or attempt) | `Failure(Timeout)` |
//! | shed, rate limited, circuit open | `Failure(Local)` — refused before sending |
//! | any other error | `Failure(Other)` |
//!
//! ```
//! use mesh_core::classify::{Classify, FailureKind, ResponseClass, ServedBy};
//! use mesh_hyper::HttpClassifier;
//!
//! let rsp = http::Response::builder().status(503).body(()).unwrap();
//! assert_eq!(
//!     HttpClassifier.classify(Ok::<_, &mesh_hyper::Error>(&rsp)),
//!     ResponseClass::Failure(FailureKind::Status(503)),
//! );
//! ```

use std::error::Error as StdError;

use mesh_core::classify::{Classify, FailureKind, ResponseClass, ServedBy};

use crate::Error;

/// Classifies HTTP responses and mesh-hyper errors (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier;

impl<B> Classify<http::Response<B>, Error> for HttpClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &Error>) -> ResponseClass {
        match result {
            Ok(rsp) if rsp.status().is_server_error() => {
                ResponseClass::Failure(FailureKind::Status(rsp.status().as_u16()))
            }
            Ok(_) => ResponseClass::Success,
            Err(e) => ResponseClass::Failure(failure_kind(e)),
        }
    }

    fn endpoint(&self, result: Result<&http::Response<B>, &Error>) -> Option<std::net::SocketAddr> {
        match result {
            Ok(rsp) => rsp.extensions().get::<ServedBy>().map(|s| s.0),
            Err(e) => e.endpoint(),
        }
    }
}

/// The failure kind of a mesh-hyper error.
pub(crate) fn failure_kind(e: &Error) -> FailureKind {
    match e {
        Error::Connect { .. } => FailureKind::Connect,
        Error::IdentityMismatch { .. } => FailureKind::Identity,
        Error::NoEndpoints(_) => FailureKind::NoEndpoints,
        Error::Request { source, .. } if refused_stream(source.as_ref()) => FailureKind::Refused,
        // hyper gave the request back unsent: the connection closed before it could be written.
        Error::Request { source, .. } if canceled(source.as_ref()) => FailureKind::Connect,
        Error::Request { source, .. } if reset(source.as_ref()) => FailureKind::Reset,
        Error::Request { .. } => FailureKind::Other,
        Error::TimedOut(_) => FailureKind::Timeout,
        Error::Overloaded(_)
        | Error::RateLimited(_)
        | Error::CircuitOpen(_)
        | Error::FaultAborted { .. } => FailureKind::Local,
        Error::NoRoute { .. } => FailureKind::NoEndpoints,
        // Routing and configuration errors: the request was never sent anywhere.
        Error::MissingAuthority
        | Error::UnsupportedScheme(_)
        | Error::Resolve(_)
        | Error::Policy { .. } => FailureKind::NoEndpoints,
    }
}

/// Whether hyper canceled the request before writing it ("connection was not ready": the
/// connection closed as it was handed over).
fn canceled(e: &(dyn StdError + 'static)) -> bool {
    sources(e)
        .find_map(|err| err.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_canceled)
}

/// Whether the connection closed or was reset under the request before its response head: an
/// HTTP/1.1 message cut short (hyper's "connection closed before message completed"), a TCP
/// reset or broken pipe, or an HTTP/2 connection lost or stream reset by the peer (other than
/// `REFUSED_STREAM`, which is [`refused_stream`]).
fn reset(e: &(dyn StdError + 'static)) -> bool {
    sources(e)
        .find_map(|err| {
            if err
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_incomplete_message)
            {
                return Some(true);
            }
            if let Some(h2) = err.downcast_ref::<h2::Error>() {
                return Some(h2.is_io() || (h2.is_reset() && h2.is_remote()));
            }
            let io = err.downcast_ref::<std::io::Error>()?;
            use std::io::ErrorKind::*;
            Some(matches!(
                io.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ))
        })
        .unwrap_or(false)
}

/// Whether an HTTP/2 peer did not process the stream: it refused it (`REFUSED_STREAM`), or a
/// graceful `GOAWAY` (`NO_ERROR`) arrived whose last stream id is below it (h2 fails exactly
/// those streams with the remote GOAWAY's error; streams the server kept finish normally).
fn refused_stream(e: &(dyn StdError + 'static)) -> bool {
    sources(e)
        .find_map(|err| err.downcast_ref::<h2::Error>())
        .is_some_and(|h2| {
            h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR))
        })
}

/// An error and its sources, outermost first.
fn sources<'a>(
    e: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(e), |&err| err.source())
}
