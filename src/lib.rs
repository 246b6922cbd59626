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
