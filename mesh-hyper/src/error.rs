//! Errors of the meshed hyper client.

use std::{error::Error as StdError, net::SocketAddr};

use mesh_core::{
    NoEndpoints, PolicyError, ServiceName,
    breaker::CircuitOpen,
    limit::{Overloaded, RateLimited},
    mesh::ResolveError,
    telemetry::ErrorKind,
    timeout::TimedOut,
};

impl Error {
    /// The error's label in request metrics.
    pub fn telemetry_kind(&self) -> ErrorKind {
        match self {
            Self::NoEndpoints(_) => ErrorKind::NoEndpoints,
            Self::TimedOut(_) => ErrorKind::Timeout,
            Self::Overloaded(_) => ErrorKind::Overloaded,
            Self::RateLimited(_) => ErrorKind::RateLimited,
            Self::CircuitOpen(_) => ErrorKind::CircuitOpen,
            Self::Connect { .. } | Self::IdentityMismatch { .. } => ErrorKind::Connect,
            _ => ErrorKind::Other,
        }
    }
}

/// Why a meshed request failed. Every variant names the service (and the endpoint, once one was
/// chosen), so a log line alone says where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request has neither an absolute URI nor a `Host` header to route by.
    #[error(
        "request has no authority to route by: use an absolute URI (http://service:port/path) or a Host header"
    )]
    MissingAuthority,
    /// The URI scheme is not one the client speaks.
    #[error("unsupported URI scheme {0:?}: the mesh client speaks http")]
    UnsupportedScheme(String),
    /// The authority could not be resolved to a service.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// No route of the destination's VirtualService matches the request (Envoy answers 404
    /// `NR`; a gRPC caller sees `UNIMPLEMENTED`).
    #[error("no route of service {service:?} matches the request for {path:?}")]
    NoRoute {
        /// The service.
        service: ServiceName,
        /// The request's path.
        path: String,
    },
    /// A fault injected by the route's `fault.abort` (the request was not sent).
    #[error("request to service {service:?} aborted by fault injection ({})", match abort {
        mesh_core::route::Abort::Http(s) => format!("HTTP {s}"),
        mesh_core::route::Abort::Grpc(c) => format!("gRPC status {c}"),
    })]
    FaultAborted {
        /// The service.
        service: ServiceName,
        /// What the fault answers with.
        abort: mesh_core::route::Abort,
    },
    /// The service has no endpoint to send to.
    #[error(transparent)]
    NoEndpoints(#[from] NoEndpoints),
    /// The request (or its last attempt) timed out.
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    /// Shed: the destination is at its concurrency limit and its queue is full.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    /// The destination's client-side rate limit was reached.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The destination's circuit breaker is open.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    /// A service's policies could not be applied.
    #[error("service {service:?}: invalid policy: {error}")]
    Policy {
        /// The service.
        service: ServiceName,
        /// The invalid field.
        error: PolicyError,
    },
    /// No connection to the chosen endpoint could be made; the request was not sent.
    #[error(
        "connecting to {endpoint} for service {service:?} failed: {}",
        cause(source.as_ref())
    )]
    Connect {
        /// The service.
        service: ServiceName,
        /// The endpoint.
        endpoint: SocketAddr,
        /// What failed: hyper's or the TLS handshake's error, with the OS error underneath.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// The endpoint's TLS identity is not the one expected: the client refused it.
    #[error("refused endpoint {endpoint} of service {service:?}: {mismatch}")]
    IdentityMismatch {
        /// The service.
        service: ServiceName,
        /// The endpoint.
        endpoint: SocketAddr,
        /// Expected and presented identities.
        mismatch: mesh_core::tls::IdentityMismatch,
    },
    /// The request failed on an established connection (reset, protocol error, closed early).
    #[error(
        "request to {endpoint} for service {service:?} failed: {}",
        cause(source.as_ref())
    )]
    Request {
        /// The service.
        service: ServiceName,
        /// The endpoint.
        endpoint: SocketAddr,
        /// hyper's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
}

/// hyper's error with its innermost cause ("client error (Connect): Connection refused").
fn cause(e: &(dyn StdError + Send + Sync + 'static)) -> String {
    let e: &(dyn StdError + 'static) = e;
    let mut root: &(dyn StdError + 'static) = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if std::ptr::addr_eq(root, e) {
        e.to_string()
    } else {
        format!("{e}: {root}")
    }
}

impl Error {
    /// The endpoint the request was sent (or meant) to, if one was chosen.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        match self {
            Error::Connect { endpoint, .. }
            | Error::Request { endpoint, .. }
            | Error::IdentityMismatch { endpoint, .. } => Some(*endpoint),
            _ => None,
        }
    }

    /// Whether the request certainly never reached the server.
    pub fn is_unprocessed(&self) -> bool {
        crate::classify::failure_kind(self).is_unprocessed()
    }

    /// The innermost source error, for logs.
    pub fn root_cause(&self) -> &(dyn StdError + 'static) {
        let mut e: &(dyn StdError + 'static) = self;
        while let Some(next) = e.source() {
            e = next;
        }
        e
    }
}
