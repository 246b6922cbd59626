//! Layers and helpers for tonic servers: what a sidecar does to incoming gRPC calls.
//!
//! - [`incoming`]: accepts connections through mesh-hyper's [`Acceptor`] (mTLS `STRICT`,
//!   `PERMISSIVE` or plaintext) for tonic's `serve_with_incoming`; every call carries the
//!   caller's verified SPIFFE ID as [`PeerIdentity`] in its extensions;
//! - [`MetricsLayer`]: every call counted by caller identity and gRPC status (from the
//!   trailers when the call streams), with its latency and the calls in flight;
//! - [`AuthzLayer`]: Istio `AuthorizationPolicy` semantics; denied calls get
//!   `PERMISSION_DENIED` and never reach the service;
//! - [`RateLimitLayer`]: per-method and per-caller rate limits; over the limit,
//!   `RESOURCE_EXHAUSTED`;
//! - [`DeadlineLayer`]: reads `grpc-timeout` and makes it the deadline of every mesh call the
//!   handler makes (see [`mesh_core::deadline`]);
//! - [`TraceLayer`]: W3C trace context from the call to the mesh calls its handler makes, a
//!   span per call (method, caller, trace id) and its outcome as an event;
//! - [`health_service`](crate::health::health_service): the `grpc.health.v1` service.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_core::{authz::Authorizer, tls::{ServerTlsMode, TlsFiles, TlsSettings, TlsStore}};
//! use mesh_tonic::server::{incoming, Acceptor, AuthzLayer, DeadlineLayer, TraceLayer};
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = TlsStore::load(TlsFiles::new("cert.pem", "key.pem", "ca.pem"), TlsSettings::default())?;
//! let authz = Arc::new(Authorizer::new(vec![])?);
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9080").await?;
//! let (_reporter, health) = mesh_tonic::health::health_service();
//! tonic::transport::Server::builder()
//!     .layer(ServiceBuilder::new()
//!         .layer(TraceLayer::new())
//!         .layer(AuthzLayer::new(authz))
//!         .layer(DeadlineLayer::new())
//!         .into_inner())
//!     .add_service(health)
//!     // .add_service(ReviewsServer::new(app))
//!     .serve_with_incoming(incoming(listener, Acceptor::new(Some(store), ServerTlsMode::Strict)?))
//!     .await?;
//! # Ok(()) }
//! ```

mod deadline;
mod incoming;
mod trace;

pub use mesh_core::identity::PeerIdentity;
pub use mesh_hyper::server::{
    Acceptor, Authz, AuthzLayer, Metrics, MetricsBody, MetricsFuture, MetricsLayer, RateLimit,
    RateLimitLayer, RateLimitRule, RateLimited,
};

pub use self::{
    deadline::{Deadline, DeadlineFuture, DeadlineLayer},
    incoming::{Incoming, MAX_HANDSHAKES, MeshStream, incoming},
    trace::{Trace, TraceFuture, TraceLayer},
};
