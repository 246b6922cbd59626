//! Wire types → mesh's validated policy types (linkerd2-proxy's `proto` → `TryFrom` →
//! policy). Every problem is recorded with its field path; a document with an error produces
//! nothing.

pub(crate) mod common;
pub mod destination_rule;
mod route_policy;
pub mod security;
pub mod service_entry;
mod traffic_policy;
pub mod virtual_service;

use super::{Workload, error::Problems, host::Naming};

/// What converting one document needs: where it is, who is reading it, and where problems go.
pub(crate) struct Ctx<'a> {
    /// The local workload's namespace and domains.
    pub(crate) naming: &'a Naming,
    /// The local workload (selectors are decided against it).
    pub(crate) workload: &'a Workload,
    /// The document's namespace.
    pub(crate) ns: &'a str,
    /// `Kind namespace/name`.
    pub(crate) document: &'a str,
    /// Problems of the whole set.
    pub(crate) p: Problems<'a>,
}
