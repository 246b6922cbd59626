//! gRPC statuses: reading them off responses, naming codes, and turning mesh errors into
//! [`tonic::Status`].
//!
//! | mesh error | gRPC code |
//! |---|---|
//! | no endpoints, unknown service, connect failure, identity mismatch, circuit open, connection lost | `UNAVAILABLE` |
//! | shed (overloaded) or rate limited | `RESOURCE_EXHAUSTED` |
//! | timeout (request deadline or attempt) | `DEADLINE_EXCEEDED` |
//! | invalid policy | `FAILED_PRECONDITION` |
//! | request without a routable authority | `INTERNAL` |
//! | no route of the VirtualService matches | `UNIMPLEMENTED` (Envoy's 404 `NR`, as gRPC maps it) |
//! | fault injection abort | the `grpcStatus` asked, or the `httpStatus` mapped as gRPC maps HTTP |
//!
//! Authorization denials come from the server as `PERMISSION_DENIED` (see
//! [`server`](crate::server)). Every message names the service and the reason.
//!
//! ```
//! use mesh_tonic::status::{code_from_name, grpc_status_of};
//!
//! assert_eq!(code_from_name("UNAVAILABLE"), Some(14));
//! assert_eq!(code_from_name("deadline_exceeded"), Some(4));
//! let rsp = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
//! assert_eq!(grpc_status_of(rsp.headers()), Some(14));
//! ```

use mesh_hyper::Error;
use tonic::{Code, Status};

/// The `grpc-status` and `grpc-message` headers, reading a status off headers or trailers, and
/// the HTTP-to-gRPC code mapping (shared with mesh-hyper's server layers).
pub use mesh_hyper::grpc::{GRPC_MESSAGE, GRPC_STATUS, code_from_http, grpc_status_of};

/// gRPC code names, by code (0 to 16), as the service config and `grpc-status` docs spell them.
pub use mesh_core::telemetry::GRPC_CODE_NAMES as CODE_NAMES;

/// The code a name stands for (case-insensitive, `-` or `_`), e.g. `UNAVAILABLE` → 14.
pub fn code_from_name(name: &str) -> Option<u16> {
    let norm = name.trim().replace('-', "_");
    CODE_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(&norm))
        .map(|i| i as u16)
}

/// The name of a code (`14` → `UNAVAILABLE`).
pub fn code_name(code: u16) -> &'static str {
    CODE_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// The [`Status`] a mesh error stands for (see the [module docs](self)). The error stays
/// reachable as the status's source.
pub fn to_status(error: Error) -> Status {
    let code = match &error {
        Error::NoEndpoints(_)
        | Error::Resolve(_)
        | Error::Connect { .. }
        | Error::IdentityMismatch { .. }
        | Error::CircuitOpen(_)
        | Error::Request { .. } => Code::Unavailable,
        Error::Overloaded(_) | Error::RateLimited(_) => Code::ResourceExhausted,
        Error::TimedOut(_) => Code::DeadlineExceeded,
        Error::Policy { .. } => Code::FailedPrecondition,
        Error::MissingAuthority | Error::UnsupportedScheme(_) => Code::Internal,
        Error::NoRoute { .. } => Code::Unimplemented,
        Error::FaultAborted { abort, .. } => Code::from_i32(i32::from(match abort {
            mesh_core::route::Abort::Grpc(c) => *c,
            mesh_core::route::Abort::Http(s) => code_from_http(
                http::StatusCode::from_u16(*s).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
            ),
        })),
    };
    let mut status = Status::new(code, error.to_string());
    status.set_source(std::sync::Arc::new(error));
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for code in 0..=16u16 {
            assert_eq!(code_from_name(code_name(code)), Some(code));
        }
        assert_eq!(code_from_name("resource-exhausted"), Some(8));
        assert_eq!(code_from_name("NOPE"), None);
    }
}
