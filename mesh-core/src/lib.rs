//! # mesh-core
//!
//! The protocol-agnostic half of mesh, an in-process service mesh: everything a sidecar proxy
//! would decide about a request, as plain data and tower services, with no HTTP client or server
//! in it. [mesh-hyper] and [mesh-tonic] put these parts around hyper and tonic.
//!
//! | module | concern |
//! |---|---|
//! | [`endpoint`], [`name`] | what a service is and what its instances are |
//! | [`discover`] | where endpoints come from: static, watched file, DNS (A/AAAA, SRV) |
//! | [`mesh`] | the registry: request authority → destination (policies + live endpoints) |
//! | [`balance`] | P2C Peak-EWMA, round robin, weighted, ring hash |
//! | [`classify`] | success / failure kinds, for the resilience layers |
//! | [`identity`] | SPIFFE workload identities |
//! | [`duration`] | Istio-style durations in configuration |
//! | [`telemetry`], [`trace_context`] | metrics, debug snapshot, W3C trace context |
//!
//! [mesh-hyper]: https://docs.rs/mesh-hyper
//! [mesh-tonic]: https://docs.rs/mesh-tonic
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod authz;
pub mod balance;
pub mod breaker;
pub mod classify;
pub mod config;
pub mod deadline;
#[cfg(feature = "dev-ca")]
pub mod dev_ca;
pub mod discover;
pub mod duration;
pub mod endpoint;
pub mod extensions;
mod fs_watch;
pub mod identity;
pub mod limit;
pub mod mesh;
pub mod name;
pub mod outlier;
pub mod policy;
mod policy_error;
pub mod retry;
pub mod route;
pub mod shared_service;
pub mod telemetry;
pub mod timeout;
pub mod tls;
pub mod trace_context;
pub mod yaml;

pub use self::policy_error::PolicyError;
pub use self::{
    balance::{BalanceConfig, Balancer, LbPolicy, NoEndpoints},
    endpoint::{Endpoint, EndpointSet, Labels},
    identity::SpiffeId,
    mesh::{Destination, Mesh, MeshBuilder},
    name::ServiceName,
    policy::{DestinationPolicy, Protocol, RoutePolicy, ServiceConfig},
};
