//! # mesh-hyper
//!
//! mesh for hyper 1.x. [`MeshClient`] replaces a hyper-util client with one that addresses
//! logical services and balances over their live endpoints (see [`client`]); [`HttpClassifier`]
//! tells the resilience layers which HTTP results are failures.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod classify;
pub mod client;
mod error;
pub mod grpc;
pub mod server;

pub use self::{
    classify::HttpClassifier,
    client::{ClientSettings, MeshClient, RequestBody},
    error::Error,
};
