//! Registries: discovery sources that list services themselves (an endpoints file, etcd), and
//! the announcements a server withdraws from them when it shuts down.

use std::{fmt, future::Future, pin::Pin};

use super::EndpointSource;
use super::status::ConfigSourceSnapshot;
use crate::ServiceName;

/// A discovery source that knows which services it lists, so that a [`Mesh`](crate::Mesh)
/// can send it every name it holds ([`MeshBuilder::registry`](crate::mesh::MeshBuilder::registry))
/// instead of one source per service. [`FileSource`](super::FileSource) is one; the
/// `mesh-etcd` crate's registry is another.
pub trait Registry: EndpointSource {
    /// The services listed now.
    fn services(&self) -> Vec<ServiceName>;

    /// Whether this registry answers for every name (also names it lists no endpoint for
    /// yet: a service that has not registered yet has no endpoints rather than falling back
    /// to DNS). Default `false`.
    fn authoritative(&self) -> bool {
        false
    }

    /// Its state for the debug snapshot and the metrics: version, rejections, the latest
    /// error and, for a remote store, the connection.
    fn status(&self) -> ConfigSourceSnapshot;
}

/// A server's record in a registry (its address under its service's name), withdrawn when the
/// server shuts down gracefully, before it drains: clients stop choosing it while the requests
/// in flight finish. mesh-hyper's `ServerSettings::announce` wires one into
/// `serve_with_shutdown`.
pub trait Announcement: fmt::Debug + Send + Sync + 'static {
    /// Removes the record. Implementations bound the time it takes; an error is logged, not
    /// returned (a record that could not be removed still expires with its lease).
    fn withdraw(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}
