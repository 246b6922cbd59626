#![doc = include_str!("../README.md")]
//!
//! ## Crates
//!
//! This facade re-exports [`core`] (discovery, balancing, policies), [`hyper`] (the meshed hyper
//! client) and [`tonic`]; with the `etcd` feature, `etcd` (registry, self-registration, documents
//! in etcd).
#![deny(missing_docs)]

pub use mesh_core as core;
/// etcd as registry and live-config store (feature `etcd`).
#[cfg(feature = "etcd")]
pub use mesh_etcd as etcd;
pub use mesh_hyper as hyper;
pub use mesh_tonic as tonic;

/// The names most programs need, in one import:
///
/// ```
/// use mesh::prelude::*;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let endpoints = StaticSource::new(vec![Endpoint::new("127.0.0.1:9080".parse()?)])?;
/// let mesh = Mesh::builder().service("reviews.default:9080", endpoints).build()?;
/// let client: MeshClient = MeshClient::new(mesh.clone()); // HTTP (hyper)
/// let grpc = GrpcClient::new(mesh); // gRPC (tonic): `grpc.channel("reviews.default:9080")`
/// # let _ = (client, grpc); Ok(()) }
/// ```
pub mod prelude {
    pub use mesh_core::{
        DestinationPolicy, Endpoint, Mesh, MeshBuilder, RoutePolicy, ServiceConfig, ServiceName,
        config::{ConfigStore, LoadOptions, Workload},
        discover::{FileSource, StaticSource},
    };
    pub use mesh_hyper::{ClientSettings, MeshClient};
    pub use mesh_tonic::{GrpcClient, MeshChannel};
}
