#![doc = include_str!("../README.md")]
//!
//! ## Crates
//!
//! This facade re-exports [`core`] (discovery, balancing, policies), [`hyper`] (the meshed hyper
//! client) and [`tonic`].
#![deny(missing_docs)]

pub use mesh_core as core;
pub use mesh_hyper as hyper;
pub use mesh_tonic as tonic;
