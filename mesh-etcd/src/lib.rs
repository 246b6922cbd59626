//! etcd for mesh: when a team outgrows files on one machine.
//!
//! - [`EtcdRegistry`]: a discovery [`Registry`](mesh_core::discover::Registry) over endpoint
//!   records under a key prefix (`/mesh/services/<service>/<instance>`, JSON
//!   [`EndpointRecord`]s), watched; garbage records are skipped and counted, the rest stay;
//! - [`Registration`]: a server's own record under a lease with keep-alive — gone within the
//!   TTL when the process dies, re-granted when lost, withdrawn on graceful shutdown
//!   (mesh-hyper's `ServerSettings::announce`);
//! - [`open_config`]: a [`ConfigStore`](mesh_core::config::ConfigStore) of Istio documents under
//!   a prefix (`/mesh/config/<kind>/<namespace>/<name>`), watched, validated whole and swapped
//!   in; the live version is etcd's revision;
//! - [`apply`] and [`list`]: what `mesh apply` and `mesh get` do — documents validated exactly
//!   as `mesh check` validates them, written in one transaction only if the whole resulting set
//!   is valid.
//!
//! Every watch survives etcd outages: the last good state stays, the client reconnects with
//! exponential backoff and full jitter, resumes from the last revision it saw and lists the
//! prefix again when a compaction passed it; events, counters and `/mesh/debug`
//! ([`RemoteState`](mesh_core::telemetry::RemoteState)) say so.
//!
//! Built only with the `etcd` feature of the `mesh` facade and of `mesh-cli` (etcd-client
//! compiles etcd's protos with `protoc`).
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_core::{Mesh, ServiceConfig, config::{LoadOptions, Workload}};
//! use mesh_etcd::{EndpointRecord, EtcdOptions, EtcdRegistry, Registration, open_config};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let etcd = EtcdOptions::from_url("etcd://127.0.0.1:2379")?;
//! // A server registers itself…
//! let me = Registration::register(&etcd, "/mesh/services/", &"ratings.default:9080".parse()?,
//!     "ratings-0", EndpointRecord::new("127.0.0.1:9080".parse()?), Duration::from_secs(5)).await?;
//! // …and a client reads endpoints and routes from etcd.
//! let mesh = Mesh::builder()
//!     .registry(EtcdRegistry::connect(&etcd, "/mesh/services/").await?, ServiceConfig::default())
//!     .config_store(open_config(&etcd, "/mesh/config/", Workload::new("default", []),
//!         LoadOptions::default()).await?)
//!     .build()?;
//! # Ok(()) }
//! ```

mod apply;
mod config;
mod error;
mod mirror;
mod options;
mod record;
mod register;
mod registry;

pub use self::{
    apply::{
        Applied, ApplyOptions, DEFAULT_CONFIG_PREFIX, DEFAULT_SERVICES_PREFIX, LiveDocument, apply,
        document_key, list,
    },
    config::open_config,
    error::EtcdError,
    options::{EtcdOptions, EtcdTls},
    record::{EndpointRecord, RecordError, parse_record, record_key},
    register::Registration,
    registry::EtcdRegistry,
};

/// The etcd client this crate uses, for raw access (tests, tools).
pub use etcd_client;
