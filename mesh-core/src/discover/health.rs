//! Active health checking: only endpoints that pass their checks stay in the endpoint set.
//!
//! [`health_checked`] sits between a discovery [`Subscription`] and its consumer (the
//! balancer). It runs one checker task per endpoint (a [`HealthProbe`] the protocol crate
//! builds: mesh-tonic's speaks `grpc.health.v1`, mesh-hyper's sends `GET path`), and publishes
//! the discovered set minus the endpoints that are out of rotation:
//!
//! - an endpoint goes **out** after `unhealthyThreshold` failed checks in a row (an explicit
//!   "not serving" answer, an error, or no answer within `timeout`), and comes back after
//!   `healthyThreshold` passes in a row (Envoy's `HealthCheck` semantics);
//! - a **new** endpoint enters rotation only once its first check passes; the first set is
//!   published when every endpoint has been checked once, so the first requests are not sent to
//!   an endpoint already known to be down;
//! - a server that does not implement the check ([`CheckResult::Unsupported`], e.g. gRPC
//!   `UNIMPLEMENTED`) is treated as healthy and no longer checked, as gRPC's client-side
//!   health checking specifies; a warning says so;
//! - discovery errors pass through (the last good set stays, with the error recorded).
//!
//! Removing an endpoint from the set, rather than flagging it in the balancer, keeps one
//! mechanism for "not in rotation" and makes health visible to every consumer of the
//! subscription; requests in flight to an endpoint that goes out finish normally.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use mesh_core::discover::{EndpointSource, StaticSource};
//! use mesh_core::discover::health::{health_checked, CheckResult, HealthCheckPolicy};
//! use mesh_core::{Endpoint, ServiceName};
//!
//! let name: ServiceName = "reviews:9080".parse().unwrap();
//! let source = StaticSource::new(vec![
//!     Endpoint::new("127.0.0.1:9081".parse().unwrap()),
//!     Endpoint::new("127.0.0.1:9082".parse().unwrap()),
//! ]).unwrap();
//! let policy = HealthCheckPolicy { interval: Duration::from_millis(10), ..Default::default() };
//! // A checker that fails the endpoint on port 9082.
//! let mut sub = health_checked(name.clone(), source.subscribe(&name), policy, |ep: &Endpoint| {
//!     let down = ep.addr.port() == 9082;
//!     move || -> mesh_core::discover::health::CheckFuture {
//!         Box::pin(async move {
//!             if down { CheckResult::Unhealthy("NOT_SERVING".into()) } else { CheckResult::Healthy }
//!         })
//!     }
//! });
//! sub.ready().await;
//! let set = sub.snapshot().endpoints.unwrap();
//! assert_eq!(set.len(), 1);
//! # }
//! ```

use std::{collections::HashMap, future::Future, net::SocketAddr, pin::Pin, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{Publisher, Snapshot, Subscription};
use crate::{ServiceName, endpoint::Endpoint, policy_error::PolicyError};

/// Default time between checks of one endpoint: 5 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default time a check may take: 1 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Active health checking of a service's endpoints. Serde form (camelCase):
///
/// ```yaml
/// healthCheck:
///   interval: 5s
///   timeout: 1s
///   unhealthyThreshold: 2
///   healthyThreshold: 1
///   grpc: { service: "" }        # the default: grpc.health.v1 Check ("" = the whole server)
///   # http: { path: /healthz }   # or: GET path, 2xx/3xx healthy (mesh-hyper)
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckPolicy {
    /// Time between the checks of one endpoint.
    #[serde(with = "crate::duration::serde")]
    pub interval: Duration,
    /// Time one check may take; no answer in time is a failed check.
    #[serde(with = "crate::duration::serde")]
    pub timeout: Duration,
    /// Failed checks in a row that take an endpoint out of rotation (default 2).
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back (default 1).
    pub healthy_threshold: u32,
    /// A `grpc.health.v1.Health/Check` call (mesh-tonic). The default kind when neither is
    /// given: a check of the whole server (service `""`).
    pub grpc: Option<GrpcHealthCheck>,
    /// An HTTP `GET` (mesh-hyper).
    pub http: Option<HttpHealthCheck>,
}

/// The kind of check a policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `grpc.health.v1.Health/Check` of this service name.
    Grpc(GrpcHealthCheck),
    /// `GET path`.
    Http(HttpHealthCheck),
}

impl Default for HealthCheckPolicy {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            grpc: None,
            http: None,
        }
    }
}

/// The gRPC health check: `grpc.health.v1.Health/Check` with this service name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcHealthCheck {
    /// The service name asked about; empty for the server as a whole.
    pub service: String,
}

/// The HTTP health check: `GET path`; 2xx and 3xx are healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// The path (starting with `/`).
    pub path: String,
}

impl HealthCheckPolicy {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.interval < Duration::from_millis(10) {
            return Err(PolicyError::new("interval", "at least 10ms"));
        }
        if self.timeout.is_zero() {
            return Err(PolicyError::new("timeout", "must be greater than zero"));
        }
        if !(1..=100).contains(&self.unhealthy_threshold) {
            return Err(PolicyError::new("unhealthyThreshold", "must be 1 to 100"));
        }
        if !(1..=100).contains(&self.healthy_threshold) {
            return Err(PolicyError::new("healthyThreshold", "must be 1 to 100"));
        }
        match (&self.grpc, &self.http) {
            (Some(_), Some(_)) => Err(PolicyError::new(
                "grpc",
                "give one kind of check: grpc or http, not both",
            )),
            (None, Some(h)) if !h.path.starts_with('/') => {
                Err(PolicyError::new("http.path", "must start with '/'"))
            }
            _ => Ok(()),
        }
    }

    /// The kind of check (gRPC of the whole server unless the policy says otherwise).
    pub fn kind(&self) -> CheckKind {
        match (&self.grpc, &self.http) {
            (None, Some(h)) => CheckKind::Http(h.clone()),
            (g, _) => CheckKind::Grpc(g.clone().unwrap_or_default()),
        }
    }
}

/// The answer of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The endpoint says it serves.
    Healthy,
    /// It says it does not, or the check failed (the reason is logged).
    Unhealthy(String),
    /// It does not implement the check: treated as healthy, and no longer checked.
    Unsupported(String),
}

/// One check's future.
pub type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// Checks one endpoint, again and again (it may keep a connection between checks).
pub trait HealthProbe: Send + 'static {
    /// Runs one check. The caller applies the timeout.
    fn check(&mut self) -> CheckFuture;
}

impl HealthProbe for Box<dyn HealthProbe> {
    fn check(&mut self) -> CheckFuture {
        (**self).check()
    }
}

impl<F> HealthProbe for F
where
    F: FnMut() -> CheckFuture + Send + 'static,
{
    fn check(&mut self) -> CheckFuture {
        self()
    }
}

/// A subscription to `upstream`'s endpoints that leaves out those failing their checks (see
/// the [module docs](self)). `new_probe` builds the checker of each endpoint. The checking stops
/// when the returned subscription (and its clones) are dropped. Outside a tokio runtime nothing
/// can be checked: `upstream` is returned as is, with an error event.
pub fn health_checked<F, P>(
    service: ServiceName,
    upstream: Subscription,
    policy: HealthCheckPolicy,
    new_probe: F,
) -> Subscription
where
    F: Fn(&Endpoint) -> P + Send + Sync + 'static,
    P: HealthProbe,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::error!(%service, "health checks need a tokio runtime: endpoints are not checked");
        return upstream;
    };
    let publisher = Publisher::new();
    let subscription = publisher.subscribe();
    rt.spawn(
        Filter {
            service,
            policy,
            publisher,
            endpoints: HashMap::new(),
            next_id: 0,
        }
        .run(upstream, new_probe),
    );
    subscription
}

/// One endpoint under checking.
struct Checked {
    endpoint: Endpoint,
    /// Identifies this checker's messages (an endpoint removed and re-added gets a new one).
    id: u64,
    /// `None` until its first check answered.
    healthy: Option<bool>,
    task: JoinHandle<()>,
}

impl Drop for Checked {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A checker's news: endpoint `id` is now healthy or not.
struct Verdict {
    addr: SocketAddr,
    id: u64,
    healthy: bool,
}

struct Filter {
    service: ServiceName,
    policy: HealthCheckPolicy,
    publisher: Publisher,
    endpoints: HashMap<SocketAddr, Checked>,
    next_id: u64,
}

impl Filter {
    async fn run<F, P>(mut self, mut upstream: Subscription, new_probe: F)
    where
        F: Fn(&Endpoint) -> P + Send + Sync + 'static,
        P: HealthProbe,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut snap = upstream.snapshot_and_update();
        self.follow(&snap, &new_probe, &tx);
        self.publish(&snap);
        let mut upstream_open = true;
        loop {
            tokio::select! {
                changed = upstream.changed(), if upstream_open => {
                    if !changed {
                        // The source is gone: its last set stays, and so does checking it.
                        upstream_open = false;
                        continue;
                    }
                    snap = upstream.snapshot_and_update();
                    self.follow(&snap, &new_probe, &tx);
                }
                Some(v) = rx.recv() => self.verdict(v),
                () = self.publisher.closed() => return,
            }
            self.publish(&snap);
        }
    }

    /// Starts checking new endpoints, stops checking removed ones.
    fn follow<F, P>(&mut self, snap: &Snapshot, new_probe: &F, tx: &mpsc::UnboundedSender<Verdict>)
    where
        F: Fn(&Endpoint) -> P,
        P: HealthProbe,
    {
        let Some(set) = &snap.endpoints else { return };
        self.endpoints.retain(|addr, _| set.get(addr).is_some());
        for ep in set {
            match self.endpoints.get_mut(&ep.addr) {
                // Metadata changes (weight, labels) do not restart checking.
                Some(c) if c.endpoint.identity == ep.identity => c.endpoint = ep.clone(),
                _ => {
                    self.next_id += 1;
                    let id = self.next_id;
                    let task = tokio::spawn(check_loop(
                        self.service.clone(),
                        ep.addr,
                        id,
                        new_probe(ep),
                        self.policy.clone(),
                        tx.clone(),
                    ));
                    self.endpoints.insert(
                        ep.addr,
                        Checked {
                            endpoint: ep.clone(),
                            id,
                            healthy: None,
                            task,
                        },
                    );
                }
            }
        }
    }

    fn verdict(&mut self, v: Verdict) {
        if let Some(c) = self.endpoints.get_mut(&v.addr).filter(|c| c.id == v.id) {
            c.healthy = Some(v.healthy);
        }
    }

    /// Publishes the healthy endpoints, once every endpoint has been checked at least once.
    fn publish(&self, snap: &Snapshot) {
        let Some(discovered) = &snap.endpoints else {
            return; // discovery has not answered yet
        };
        let first = self.publisher.snapshot().endpoints.is_none();
        if first && self.endpoints.values().any(|c| c.healthy.is_none()) {
            return; // wait for every endpoint's first answer
        }
        let set = discovered.filter(|e| {
            self.endpoints
                .get(&e.addr)
                .is_some_and(|c| c.healthy == Some(true))
        });
        let unhealthy = discovered.len() - set.len();
        if self.publisher.publish_filtered(set, unhealthy) {
            tracing::debug!(service = %self.service,
                healthy = self.publisher.snapshot().endpoints.map_or(0, |s| s.len()),
                discovered = self.endpoints.len(), "healthy endpoints changed");
        }
        if let Some(e) = &snap.last_error {
            self.publisher.fail(e.clone());
        }
    }
}

/// Checks one endpoint every `interval`, and reports when its health changes (and the first
/// answer).
async fn check_loop<P: HealthProbe>(
    service: ServiceName,
    addr: SocketAddr,
    id: u64,
    mut probe: P,
    policy: HealthCheckPolicy,
    tx: mpsc::UnboundedSender<Verdict>,
) {
    let mut healthy: Option<bool> = None;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let result = match tokio::time::timeout(policy.timeout, probe.check()).await {
            Ok(r) => r,
            Err(_) => CheckResult::Unhealthy(format!(
                "no answer within {}",
                crate::duration::format(policy.timeout)
            )),
        };
        let next = match result {
            CheckResult::Healthy => {
                passes += 1;
                failures = 0;
                (healthy.is_none() || passes >= policy.healthy_threshold).then_some(true)
            }
            CheckResult::Unhealthy(reason) => {
                failures += 1;
                passes = 0;
                tracing::debug!(%service, endpoint = %addr, %reason, failures, "health check failed");
                // A new endpoint enters rotation only once healthy: its first failure counts.
                (healthy.is_none() || failures >= policy.unhealthy_threshold).then_some(false)
            }
            CheckResult::Unsupported(reason) => {
                tracing::warn!(%service, endpoint = %addr, %reason,
                    "endpoint does not implement health checks: treated as healthy, no longer checked");
                let _ = tx.send(Verdict {
                    addr,
                    id,
                    healthy: true,
                });
                return;
            }
        };
        if let Some(now) = next.filter(|n| healthy != Some(*n)) {
            match (healthy, now) {
                (Some(true), false) => tracing::info!(%service, endpoint = %addr,
                    failures, "endpoint failed health checks: out of rotation"),
                (Some(false), true) => tracing::info!(%service, endpoint = %addr,
                    "endpoint passed health checks: back in rotation"),
                (None, false) => tracing::info!(%service, endpoint = %addr,
                    "new endpoint failed its first health check: not in rotation"),
                _ => tracing::debug!(%service, endpoint = %addr, "new endpoint healthy"),
            }
            healthy = Some(now);
            if tx
                .send(Verdict {
                    addr,
                    id,
                    healthy: now,
                })
                .is_err()
            {
                return;
            }
        }
        tokio::time::sleep(policy.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;
    use crate::discover::{EndpointSource, StaticSource};

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_leave_and_rejoin_with_their_checks() {
        let name: ServiceName = "svc:80".parse().unwrap();
        let source = StaticSource::new(vec![ep(1), ep(2)]).unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let flag = down.clone();
        let policy = HealthCheckPolicy {
            interval: Duration::from_millis(100),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            ..Default::default()
        };
        let mut sub = health_checked(
            name.clone(),
            source.subscribe(&name),
            policy,
            move |e: &Endpoint| {
                let (flag, port) = (flag.clone(), e.addr.port());
                move || -> CheckFuture {
                    let down = port == 2 && flag.load(Ordering::SeqCst);
                    Box::pin(async move {
                        if down {
                            CheckResult::Unhealthy("NOT_SERVING".into())
                        } else {
                            CheckResult::Healthy
                        }
                    })
                }
            },
        );
        sub.ready().await;
        assert_eq!(sub.snapshot().endpoints.unwrap().len(), 2);

        down.store(true, Ordering::SeqCst);
        // One failure is not enough (threshold 2)...
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(sub.snapshot().endpoints.unwrap().len(), 2);
        // ...two are.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snap = sub.snapshot();
        let set = snap.endpoints.unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get(&ep(1).addr).is_some());
        assert_eq!(
            snap.unhealthy, 1,
            "the filtered stream says one was left out"
        );

        // With every endpoint down, the balancer says why there are none.
        source.update(vec![ep(2)]).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let balancer = crate::balance::Balancer::new(
            name.clone(),
            sub.clone(),
            crate::balance::BalanceConfig::default(),
            |_: &Endpoint| {
                tower::service_fn(|_: http::Request<()>| async {
                    Ok::<(), crate::balance::NoEndpoints>(())
                })
            },
        );
        let err = balancer.send(http::Request::new(())).await.unwrap_err();
        assert_eq!(err.reason, crate::balance::NoEndpointsReason::Unhealthy(1));
        assert!(
            err.to_string().contains("fail their health checks"),
            "{err}"
        );
        drop(balancer);
        source.update(vec![ep(1), ep(2)]).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;

        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(sub.snapshot().endpoints.unwrap().len(), 2);

        // A removed endpoint is no longer checked or published.
        source.update(vec![ep(1)]).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sub.snapshot().endpoints.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unsupported_checks_count_as_healthy_and_hanging_ones_as_failures() {
        let name: ServiceName = "svc:80".parse().unwrap();
        let source = StaticSource::new(vec![ep(1), ep(2)]).unwrap();
        let policy = HealthCheckPolicy {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let mut sub = health_checked(
            name.clone(),
            source.subscribe(&name),
            policy,
            |e: &Endpoint| {
                let port = e.addr.port();
                move || -> CheckFuture {
                    Box::pin(async move {
                        if port == 1 {
                            CheckResult::Unsupported("UNIMPLEMENTED".into())
                        } else {
                            std::future::pending().await
                        }
                    })
                }
            },
        );
        sub.ready().await;
        let set = sub.snapshot().endpoints.unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get(&ep(1).addr).is_some());
    }

    #[test]
    fn invalid_policies_name_their_field() {
        let p: HealthCheckPolicy = serde_json::from_str(r#"{"interval": "1ms"}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "interval");
        let p: HealthCheckPolicy =
            serde_json::from_str(r#"{"http": {"path": "healthz"}}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "http.path");
        let p: HealthCheckPolicy =
            serde_json::from_str(r#"{"http": {"path": "/healthz"}, "grpc": {}}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field, "grpc");
        let p: HealthCheckPolicy =
            serde_json::from_str(r#"{"http": {"path": "/healthz"}}"#).unwrap();
        assert!(matches!(p.kind(), CheckKind::Http(_)));
        assert_eq!(
            HealthCheckPolicy::default().kind(),
            CheckKind::Grpc(GrpcHealthCheck::default())
        );
        assert!(serde_json::from_str::<HealthCheckPolicy>(r#"{"intervall": "1s"}"#).is_err());
    }
}
