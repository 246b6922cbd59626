//! Service discovery: where each logical service's endpoints come from.
//!
//! A discovery source publishes, per service, a stream of [`EndpointSet`] snapshots through a
//! [`Publisher`]; consumers hold a [`Subscription`] (a `tokio::sync::watch` receiver underneath, so
//! a slow consumer only ever sees the newest set, never a backlog). Sources:
//!
//! - [`StaticSource`]: a list given in code (and replaceable from code);
//! - [`FileSource`]: a YAML or JSON file mapping services to endpoints, watched with `notify`;
//! - [`DnsSource`]: A/AAAA (`host:port`) or SRV names through hickory-resolver, re-resolved at the
//!   record TTL within min/max clamps.
//!
//! A [`Registry`] is a source that lists its services itself (the endpoints file; etcd, in the
//! `mesh-etcd` crate): a mesh asks it for every name it holds.
//!
//! [`health::health_checked`] filters any subscription down to the endpoints passing active
//! health checks.
//!
//! Every source **keeps the last good set** when it breaks: an unreadable file, an NXDOMAIN or a
//! timeout is recorded in [`Snapshot::last_error`] and logged, and the endpoints stay as they were.
//!
//! A subscription is also a tower [`Discover`](tower::discover::Discover) through
//! [`Subscription::into_discover`]: the snapshots are diffed into `Change::Insert` (new or updated
//! endpoint; tower replaces a service inserted again under the same key) and `Change::Remove`.
//!
//! ```
//! use mesh_core::discover::{EndpointSource, StaticSource};
//! use mesh_core::{Endpoint, ServiceName};
//!
//! let source = StaticSource::new(vec![Endpoint::new("127.0.0.1:9081".parse().unwrap())]).unwrap();
//! let sub = source.subscribe(&"reviews:9080".parse::<ServiceName>().unwrap());
//! assert_eq!(sub.snapshot().endpoints.unwrap().len(), 1);
//! ```

mod dns;
mod file;
pub mod health;
mod registry;
pub(crate) mod status;
mod stream;

use std::{fmt, path::PathBuf, sync::Arc};

use tokio::sync::watch;

pub use self::{
    dns::{DnsOptions, DnsResolver, DnsSource},
    file::{FileFormatError, FileSource, RECENT_ERRORS},
    registry::{Announcement, Registry},
    stream::EndpointStream,
};
use crate::{
    ServiceName,
    endpoint::{DuplicateEndpoint, Endpoint, EndpointSet},
};

/// Why a discovery source could not produce endpoints. The previous endpoints stay in use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// An endpoints file could not be read or is invalid.
    #[error("endpoints file {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field path where there is one.
        reason: String,
    },
    /// A DNS lookup failed (NXDOMAIN, no records, timeout, server failure).
    #[error("DNS lookup of {name}: {reason}")]
    Dns {
        /// The queried name.
        name: String,
        /// The failure.
        reason: String,
    },
    /// Any other source.
    #[error("{source_name}: {reason}")]
    Other {
        /// The source that failed.
        source_name: String,
        /// The failure.
        reason: String,
    },
}

/// The state of one service as a source last published it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The endpoints; `None` until the source has answered once (a source that fails before
    /// its first answer publishes an empty set, so nobody waits on it forever).
    pub endpoints: Option<EndpointSet>,
    /// The latest failure since the last successful update, if any.
    pub last_error: Option<DiscoveryError>,
    /// Incremented on every change of `endpoints`.
    pub version: u64,
    /// Failures the source reported so far (each kept the last good endpoints).
    pub errors: u64,
    /// Endpoints that discovery lists but that are left out of `endpoints` because their
    /// active health checks fail (always 0 for unfiltered sources): tells "the service is down"
    /// from "discovery lists nothing".
    pub unhealthy: usize,
}

/// Where endpoints of services come from. Implemented by every discovery source.
pub trait EndpointSource: Send + Sync + 'static {
    /// The endpoints of `service`, now and as they change. Sources that need background work
    /// (file watching, DNS refresh) start it on first subscription, inside the current tokio
    /// runtime.
    fn subscribe(&self, service: &ServiceName) -> Subscription;

    /// Whether nobody listens to this source any more (every subscription was dropped), so
    /// that a mesh may forget a source it created on demand. Default `false`.
    fn is_idle(&self) -> bool {
        false
    }
}

impl<S: EndpointSource + ?Sized> EndpointSource for Arc<S> {
    fn subscribe(&self, service: &ServiceName) -> Subscription {
        (**self).subscribe(service)
    }

    fn is_idle(&self) -> bool {
        (**self).is_idle()
    }
}

/// The sending half of one service's endpoint stream; held by a source.
#[derive(Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Publisher {
    /// A publisher that has not answered yet.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(Snapshot::default())),
        }
    }

    /// Replaces the endpoint set and clears any recorded error. Subscribers are only woken when
    /// something changed. Returns whether the endpoints changed.
    pub fn publish(&self, endpoints: EndpointSet) -> bool {
        let mut changed = false;
        self.tx.send_if_modified(|snap| {
            let had_error = snap.last_error.take().is_some();
            if snap.endpoints.as_ref() != Some(&endpoints) {
                snap.endpoints = Some(endpoints);
                snap.version += 1;
                changed = true;
            }
            changed || had_error
        });
        changed
    }

    /// Records a failure; the endpoints stay as they were. A publisher that never answered
    /// becomes an empty set, so requests fail with this reason instead of waiting.
    pub fn fail(&self, error: DiscoveryError) {
        self.tx.send_modify(|snap| {
            if snap.endpoints.is_none() {
                snap.endpoints = Some(EndpointSet::empty());
                snap.version += 1;
            }
            snap.last_error = Some(error);
            snap.errors += 1;
        });
    }

    /// Like [`publish`](Self::publish), for a filtered stream: `endpoints` are those that
    /// passed, `unhealthy` the number left out (see [`Snapshot::unhealthy`]).
    pub fn publish_filtered(&self, endpoints: EndpointSet, unhealthy: usize) -> bool {
        let changed = self.publish(endpoints);
        self.tx.send_if_modified(|snap| {
            let differs = snap.unhealthy != unhealthy;
            snap.unhealthy = unhealthy;
            differs
        });
        changed
    }

    /// A new subscription to this stream.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }

    /// Whether nobody is subscribed any more (a source may stop its background work).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Completes when the last subscription is dropped.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("snapshot", &*self.tx.borrow())
            .finish()
    }
}

/// The receiving half of one service's endpoint stream.
#[derive(Clone, Debug)]
pub struct Subscription {
    rx: watch::Receiver<Snapshot>,
}

impl Subscription {
    /// The latest snapshot, marking it seen.
    pub fn snapshot(&self) -> Snapshot {
        self.rx.borrow().clone()
    }

    /// The latest snapshot, marking it seen so that [`changed`](Self::changed) waits for a newer one.
    pub fn snapshot_and_update(&mut self) -> Snapshot {
        self.rx.borrow_and_update().clone()
    }

    /// Waits for a snapshot newer than the last one seen. Returns `false` when the source is gone
    /// (the last snapshot then stays valid forever).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Waits until the source has answered at least once (or is gone).
    pub async fn ready(&mut self) {
        // An error from wait_for means the sender is gone: nothing more will come.
        let _ = self.rx.wait_for(|s| s.endpoints.is_some()).await;
    }

    /// A tower [`Discover`](tower::discover::Discover) over this stream, keyed by address.
    pub fn into_discover(self) -> EndpointStream {
        EndpointStream::new(self.rx)
    }
}

/// A list of endpoints given in code: the simplest source, and the one to drive discovery from
/// application code (call [`update`](Self::update) whenever the list changes).
#[derive(Clone, Debug)]
pub struct StaticSource {
    publisher: Publisher,
}

impl StaticSource {
    /// A source that always answers `endpoints`.
    pub fn new(endpoints: Vec<Endpoint>) -> Result<Self, DuplicateEndpoint> {
        let publisher = Publisher::new();
        publisher.publish(EndpointSet::new(endpoints)?);
        Ok(Self { publisher })
    }

    /// Replaces the list; subscribers see the change at once.
    pub fn update(&self, endpoints: Vec<Endpoint>) -> Result<(), DuplicateEndpoint> {
        let set = EndpointSet::new(endpoints)?;
        if self.publisher.publish(set.clone()) {
            tracing::debug!(endpoints = set.len(), "static endpoints replaced");
        }
        Ok(())
    }
}

impl EndpointSource for StaticSource {
    fn subscribe(&self, _service: &ServiceName) -> Subscription {
        self.publisher.subscribe()
    }

    fn is_idle(&self) -> bool {
        self.publisher.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> EndpointSet {
        EndpointSet::new(
            ports
                .iter()
                .map(|p| Endpoint::new(([127, 0, 0, 1], *p).into()))
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn publisher_keeps_last_good_set_on_failure() {
        let p = Publisher::new();
        let mut sub = p.subscribe();
        assert!(sub.snapshot().endpoints.is_none());
        assert!(p.publish(set(&[1, 2])));
        assert!(sub.changed().await);
        p.fail(DiscoveryError::Other {
            source_name: "test".into(),
            reason: "broken".into(),
        });
        let snap = sub.snapshot_and_update();
        assert_eq!(snap.endpoints.unwrap().len(), 2);
        assert!(snap.last_error.unwrap().to_string().contains("broken"));
        // Publishing the same set clears the error but does not bump the version.
        let v = p.snapshot().version;
        assert!(!p.publish(set(&[1, 2])));
        assert_eq!(p.snapshot().version, v);
        assert!(p.snapshot().last_error.is_none());
    }

    #[tokio::test]
    async fn failure_before_first_answer_resolves_empty() {
        let p = Publisher::new();
        let mut sub = p.subscribe();
        p.fail(DiscoveryError::Dns {
            name: "x".into(),
            reason: "NXDOMAIN".into(),
        });
        sub.ready().await;
        assert!(sub.snapshot().endpoints.unwrap().is_empty());
    }
}
