//! The request and response extensions the layers talk through, in one place.
//!
//! The layers of a destination's stack are separate services; what one learns and another
//! needs travels in `http::Extensions`. Every such type is listed here with who writes it and
//! who reads it; nothing else passes between layers.
//!
//! | extension | on | written by | read by |
//! |---|---|---|---|
//! | [`Deadline`] | request | the route's timeout (or inherited from the call being served) | retry (time left for another attempt), limit (how long to queue), the gRPC dialect (`grpc-timeout`) |
//! | [`AttemptTimeout`] | request | retry, on each attempt its per-try timeout bounds | balancer (an attempt dropped unanswered past it is a timeout failure of its endpoint, for outlier detection and load) |
//! | [`TriedEndpoints`] | request | retry, before an attempt that may need it | balancer (prefer endpoints not tried yet) |
//! | [`ServedBy`] | response | the endpoint, on a failed response | retry (retry elsewhere), outlier detection |
//! | [`LateOutcome`] | response | balancer and breaker, for an outcome known only at the end of the body | the protocol's response body (gRPC trailers) |
//! | [`PendingStatus`] | response | the client's request metrics | the protocol's response body (the final gRPC status) |
//! | [`Routed`] | response | the router | the application (which route and subset served it), telemetry |
//! | [`PeerIdentity`] | request (server) | the server's connection (`WithPeer`), from the acceptor | authorization, rate limits, inbound metrics, the application |
//!
//! ```
//! use mesh_core::extensions::Routed;
//!
//! let mut rsp = http::Response::new(());
//! rsp.extensions_mut().insert(Routed::new("spec.http[0]", "reviews.default.svc.cluster.local:9080", Some("v2")));
//! let routed = rsp.extensions().get::<Routed>().unwrap();
//! assert_eq!(routed.subset(), Some("v2"));
//! ```

use std::sync::Arc;

pub use crate::{
    balance::TriedEndpoints,
    classify::{LateOutcome, ServedBy},
    deadline::{AttemptTimeout, Deadline},
    identity::PeerIdentity,
    telemetry::PendingStatus,
};

/// Which route took a request and which backend (service and subset) answered it. Cheap to
/// clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed(Arc<(String, String, Option<String>)>);

impl Routed {
    /// A route (its label), a service and a subset.
    pub fn new(route: &str, service: &str, subset: Option<&str>) -> Self {
        Self(Arc::new((
            route.to_owned(),
            service.to_owned(),
            subset.map(str::to_owned),
        )))
    }

    /// The route's label (its `name`, else where it was written: `spec.http[1]`).
    pub fn route(&self) -> &str {
        &self.0.0
    }

    /// The service of the backend.
    pub fn service(&self) -> &str {
        &self.0.1
    }

    /// The subset of the backend, if it was one.
    pub fn subset(&self) -> Option<&str> {
        self.0.2.as_deref()
    }
}
