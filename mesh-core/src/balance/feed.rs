//! One service's endpoint stream feeding several balancers: the service's own and one per
//! subset, each over the endpoints its labels select, from a single task.

use std::{
    fmt,
    sync::{Arc, Mutex, Weak},
};

use tokio::sync::oneshot;

use super::{NewEndpoint, Shared};
use crate::{
    ServiceName,
    discover::{Snapshot, Subscription},
    endpoint::Labels,
};

/// A label selector: an endpoint matches when it has every `key: value` (a DestinationRule
/// subset's `labels`; empty: every endpoint).
pub type Selector = Arc<[(String, String)]>;

/// The endpoints of one service, shared by the balancers built on it (see
/// [`Balancer::from_feed`](super::Balancer::from_feed)). Subsets follow discovery changes with
/// no task of their own: one task per service applies each new snapshot to every balancer,
/// filtered by its selector. Cheap to clone; the task ends with the last clone.
#[derive(Clone)]
pub struct EndpointFeed {
    inner: Arc<FeedInner>,
}

struct FeedInner {
    service: ServiceName,
    subscription: Subscription,
    members: Mutex<Vec<Arc<dyn Member>>>,
    /// Dropped with the feed: stops its task.
    _stop: oneshot::Sender<()>,
}

/// A balancer fed by an [`EndpointFeed`].
pub(super) trait Member: Send + Sync {
    /// Applies a snapshot; `false` once the balancer is gone.
    fn apply(&self, snap: &Snapshot) -> bool;
    /// Whether the balancer still exists.
    fn alive(&self) -> bool;
}

pub(super) struct BalancerMember<S, C, N> {
    pub(super) shared: Weak<Shared<S, C>>,
    pub(super) new_endpoint: N,
    pub(super) selector: Selector,
}

impl<S, C, N> Member for BalancerMember<S, C, N>
where
    S: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    N: NewEndpoint<S>,
{
    fn apply(&self, snap: &Snapshot) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared.apply(&select(snap, &self.selector), &self.new_endpoint);
        true
    }

    fn alive(&self) -> bool {
        self.shared.strong_count() > 0
    }
}

/// The part of a snapshot a selector keeps.
pub(super) fn select(snap: &Snapshot, selector: &[(String, String)]) -> Snapshot {
    if selector.is_empty() {
        return snap.clone();
    }
    let matches =
        |labels: &Labels| labels.matches(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Snapshot {
        endpoints: snap
            .endpoints
            .as_ref()
            .map(|set| set.filter(|e| matches(&e.labels))),
        ..snap.clone()
    }
}

impl EndpointFeed {
    /// A feed over `subscription`. The task that follows it starts here, in the current tokio
    /// runtime; outside one, the balancers keep the endpoints they started with (an error
    /// event says so).
    pub fn new(service: ServiceName, subscription: Subscription) -> Self {
        let (stop, stopped) = oneshot::channel();
        let inner = Arc::new(FeedInner {
            service,
            subscription: subscription.clone(),
            members: Mutex::new(Vec::new()),
            _stop: stop,
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(follow(Arc::downgrade(&inner), subscription, stopped));
            }
            Err(_) => tracing::error!(service = %inner.service,
                "endpoint feed created outside a tokio runtime: endpoint changes will not be applied"),
        }
        Self { inner }
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.inner.service
    }

    /// The service's latest snapshot (before any selector).
    pub fn snapshot(&self) -> Snapshot {
        self.inner.subscription.snapshot()
    }

    /// The subscription underneath.
    pub fn subscription(&self) -> &Subscription {
        &self.inner.subscription
    }

    /// Adds a balancer: it gets the current snapshot now, and every later one.
    pub(super) fn join(&self, member: Arc<dyn Member>) {
        member.apply(&self.inner.subscription.snapshot());
        let mut members = self.inner.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.alive());
        members.push(member);
    }

    /// Balancers fed now.
    pub fn members(&self) -> usize {
        let mut members = self.inner.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.alive());
        members.len()
    }
}

impl fmt::Debug for EndpointFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointFeed")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

async fn follow(
    inner: Weak<FeedInner>,
    mut subscription: Subscription,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            alive = subscription.changed() => {
                if !alive {
                    return; // the source is gone: its last snapshot stays in force
                }
                let Some(inner) = inner.upgrade() else { return };
                let snap = subscription.snapshot_and_update();
                let members: Vec<_> = inner
                    .members
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut gone = 0;
                for m in &members {
                    if !m.apply(&snap) {
                        gone += 1;
                    }
                }
                if gone > 0 {
                    let mut members = inner.members.lock().unwrap_or_else(|e| e.into_inner());
                    members.retain(|m| m.alive());
                }
                tracing::trace!(service = %inner.service, balancers = members.len() - gone,
                    version = snap.version, "endpoints applied to the service's balancers");
            }
        }
    }
}
