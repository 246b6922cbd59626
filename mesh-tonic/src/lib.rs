//! # mesh-tonic
//!
//! mesh for tonic 0.14: a meshed gRPC channel that tonic generated clients accept, and layers
//! for tonic servers.
//!
//! - [`GrpcClient`] / [`MeshChannel`]: `ReviewsClient::new(grpc.channel("reviews.default:9080")?)`
//!   — discovery, balancing, retries on `UNAVAILABLE`, deadlines, outlier ejection by
//!   `grpc-status`, active `grpc.health.v1` checks and mTLS, over mesh-hyper's client stack with
//!   the [`Grpc`] dialect (see [`channel`]);
//! - [`status`]: mesh errors as [`tonic::Status`] (no endpoints → `UNAVAILABLE`, shed →
//!   `RESOURCE_EXHAUSTED`, timeout → `DEADLINE_EXCEEDED`, ...);
//! - [`GrpcRetryPolicy`]: gRPC service-config retry fields mapped onto the mesh's retry policy;
//! - [`server`]: mTLS acceptor for `serve_with_incoming`, authorization, rate limits, deadline
//!   propagation and tracing for tonic servers; [`health`]: the health service helper.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod channel;
pub mod dialect;
pub mod grpc_timeout;
pub mod health;
pub mod retry;
pub mod server;
pub mod status;

pub use self::{
    channel::{GrpcClient, MeshChannel},
    dialect::Grpc,
    retry::GrpcRetryPolicy,
};
