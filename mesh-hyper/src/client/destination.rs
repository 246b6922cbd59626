//! One destination service: its stack, the handles on its parts, and how its endpoints are
//! reached (plaintext or mTLS with the expected identity).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU8, Ordering::Relaxed},
};

use mesh_core::{
    Balancer, Destination, PolicyError, Protocol, ServiceName,
    breaker::{Breaker, BreakerLayer},
    discover::{
        Subscription,
        health::{CheckKind, health_checked},
    },
    limit::{Limit, LimitLayer},
    retry::{ReplayBody, Retry, RetryLayer},
    telemetry::{DestinationSnapshot, DestinationSource, DiscoverySnapshot, RequestMetrics},
    timeout::{Timeout, TimeoutLayer},
    tls::{ClientTlsMode, ClientTlsPolicy, TlsStore},
};
use rustls::pki_types::ServerName;
use tower::Layer;

use super::{
    ClientSettings, Dialect, EndpointTarget, HttpEndpoint, RequestBody, endpoint::TlsTarget,
};
use crate::Error;

pub(super) type Balanced<B, D> = Balancer<HttpEndpoint<ReplayBody<B>, D>, D>;

/// The whole per-destination stack (see the module docs for the order).
pub(super) type Stack<B, D> = Timeout<Retry<Breaker<Limit<Balanced<B, D>>, D>, D>>;

/// The stack of one destination service, and handles on its parts for statistics.
pub(super) struct Dest<B, D> {
    pub(super) name: ServiceName,
    pub(super) stack: Stack<B, D>,
    pub(super) balancer: Balanced<B, D>,
    retry: RetryLayer<D>,
    limit: Limit<Balanced<B, D>>,
    breaker: Option<BreakerLayer<D>>,
    /// The discovery source's stream (before health filtering), for its version and errors.
    discovery: Subscription,
    /// Request counters and latency, when the client has telemetry.
    pub(super) metrics: Option<Arc<RequestMetrics>>,
    /// Whether requests get a `traceparent` (see `ClientSettings::trace_context`).
    pub(super) trace_context: bool,
    pub(super) dialect: D,
    /// Resolved on demand (not configured): dropped when idle.
    pub(super) on_demand: bool,
    /// Set by every request; cleared by each idle sweep.
    used: AtomicBool,
    /// Idle sweeps in a row that found it unused.
    idle_sweeps: AtomicU8,
}

impl<B: RequestBody, D: Dialect> DestinationSource for Dest<B, D> {
    fn snapshot(&self) -> DestinationSnapshot {
        let endpoints = self.balancer.endpoints();
        let discovery = self.discovery.snapshot();
        let (requests, latency) = match &self.metrics {
            Some(m) => (m.statuses(), m.latency()),
            None => (Vec::new(), RequestMetrics::default().latency()),
        };
        DestinationSnapshot {
            service: self.name.clone(),
            requests,
            latency,
            in_flight: endpoints.iter().map(|e| e.in_flight).sum(),
            retries: self.retry.stats(),
            retry_budget: self.retry.budget_available(),
            limits: self.limit.counts(),
            breaker: self.breaker.as_ref().map(BreakerLayer::state),
            endpoints,
            discovery: DiscoverySnapshot {
                version: discovery.version,
                errors: discovery.errors,
                last_error: discovery.last_error.map(|e| e.to_string()),
            },
        }
    }
}

impl<B, D> Dest<B, D> {
    /// Marks the destination used (a load, and a store only when an idle sweep cleared it).
    pub(super) fn touch(&self) {
        if !self.used.load(Relaxed) {
            self.used.store(true, Relaxed);
        }
    }

    /// For an idle sweep: clears the used mark and says whether this sweep and the one before
    /// both found it unused.
    pub(super) fn idle_for_two_sweeps(&self) -> bool {
        if self.used.swap(false, Relaxed) {
            self.idle_sweeps.store(0, Relaxed);
            return false;
        }
        let idle = self.idle_sweeps.load(Relaxed).saturating_add(1);
        self.idle_sweeps.store(idle, Relaxed);
        idle >= 2
    }
}

impl<B: RequestBody, D: Dialect> Dest<B, D> {
    /// Builds the stack of one destination, bottom to top (see the module docs).
    pub(super) fn build(
        dest: Destination,
        settings: &ClientSettings,
        dialect: &D,
    ) -> Result<Self, Error> {
        let Destination {
            name,
            config,
            mut subscription,
            on_demand,
        } = dest;
        let discovery = subscription.clone();
        let dialect = dialect.clone();
        let self_dialect = dialect.clone();
        tracing::debug!(service = %name, policy = ?config.balance.policy,
            protocol = ?config.protocol, "new destination");
        let policy_error = |error| Error::Policy {
            service: name.clone(),
            error,
        };
        let (has_telemetry, trace_context) = (settings.telemetry.is_some(), settings.trace_context);
        let settings = settings.clone();
        let protocol = dialect.protocol(config.protocol);
        if config.tls.mode == ClientTlsMode::Mutual && settings.tls.is_none() {
            return Err(policy_error(PolicyError::new(
                "tls.mode",
                "MUTUAL needs a TLS identity: set ClientSettings::tls",
            )));
        }
        let targets = Arc::new(Targets {
            service: name.clone(),
            protocol,
            tls_policy: config.tls.clone(),
            settings,
        });
        if let Some(policy) = &config.health_check {
            let kind = policy.kind();
            if !dialect.supports_health_check(&kind) {
                let field = match kind {
                    CheckKind::Grpc(_) => "healthCheck.grpc",
                    CheckKind::Http(_) => "healthCheck.http",
                };
                return Err(policy_error(PolicyError::new(
                    field,
                    "this kind of health check needs another client (gRPC checks: mesh-tonic's channel)",
                )));
            }
            let (targets, dialect) = (targets.clone(), dialect.clone());
            subscription = health_checked(
                name.clone(),
                subscription,
                policy.clone(),
                move |ep: &mesh_core::Endpoint| dialect.health_probe(&kind, &targets.target(ep)),
            );
        }
        let endpoint_dialect = dialect.clone();
        let balancer = Balancer::with_classifier(
            name.clone(),
            subscription,
            config.balance,
            move |ep: &mesh_core::Endpoint| {
                HttpEndpoint::new(&targets.target(ep), endpoint_dialect.clone())
            },
            dialect.clone(),
        );
        let limit = LimitLayer::new(name.clone(), &config.limits)
            .map_err(policy_error)?
            .layer(balancer.clone());
        let breaker_layer = match &config.breaker {
            Some(p) => {
                Some(BreakerLayer::new(name.clone(), p, dialect.clone()).map_err(policy_error)?)
            }
            None => None,
        };
        let breaker = match &breaker_layer {
            Some(l) => l.layer(limit.clone()),
            None => Breaker::disabled(limit.clone()),
        };
        let retry = RetryLayer::new(name.clone(), config.retries, dialect).map_err(policy_error)?;
        let stack = TimeoutLayer::new(name.clone(), config.timeout).layer(retry.layer(breaker));
        let metrics = has_telemetry.then(|| Arc::new(RequestMetrics::default()));
        Ok(Dest {
            name,
            stack,
            balancer,
            retry,
            limit,
            breaker: breaker_layer,
            discovery,
            metrics,
            trace_context,
            dialect: self_dialect,
            on_demand,
            used: AtomicBool::new(true),
            idle_sweeps: AtomicU8::new(0),
        })
    }
}

/// What every endpoint of one destination is reached with.
pub(super) struct Targets {
    service: ServiceName,
    protocol: Protocol,
    tls_policy: ClientTlsPolicy,
    settings: ClientSettings,
}

impl Targets {
    fn target(&self, endpoint: &mesh_core::Endpoint) -> EndpointTarget {
        EndpointTarget {
            service: self.service.clone(),
            endpoint: endpoint.clone(),
            protocol: self.protocol,
            tls: tls_target(
                &self.service,
                endpoint,
                self.protocol,
                &self.tls_policy,
                self.settings.tls.as_ref(),
            )
            .map(Arc::new),
            settings: self.settings.clone(),
        }
    }
}

/// Decides whether an endpoint is reached over mTLS, and with which expected identity.
fn tls_target(
    service: &ServiceName,
    endpoint: &mesh_core::Endpoint,
    protocol: Protocol,
    policy: &ClientTlsPolicy,
    store: Option<&TlsStore>,
) -> Option<TlsTarget> {
    let store = store?;
    let expected = endpoint
        .identity
        .clone()
        .or_else(|| policy.identity.clone());
    let mutual = match policy.mode {
        ClientTlsMode::Disable => false,
        ClientTlsMode::Mutual => true,
        ClientTlsMode::Auto => expected.is_some(),
    };
    if !mutual {
        return None;
    }
    let alpn: &[&[u8]] = match protocol {
        Protocol::Http2 => &[mesh_core::tls::ALPN_H2],
        Protocol::Http1 => &[mesh_core::tls::ALPN_HTTP11],
    };
    let connector = match store.client_config(expected.clone(), alpn) {
        Ok(config) => Ok(tokio_rustls::TlsConnector::from(config)),
        Err(e) => {
            // `TlsStore` checked when it loaded that its configurations build, so this is not
            // expected. Connecting in plaintext instead would be wrong: the endpoint's
            // connections fail with the reason.
            tracing::error!(%service, endpoint = %endpoint.addr, error = %e, "cannot build TLS client configuration");
            Err(Arc::from(e.to_string()))
        }
    };
    // The verifier checks the SPIFFE ID, not names; the service host is sent as SNI when it is
    // a DNS name (a server may route on it), otherwise the endpoint's IP.
    let server_name = ServerName::try_from(service.host().to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(endpoint.addr.ip().into()));
    tracing::debug!(%service, endpoint = %endpoint.addr, expected = ?expected, "endpoint uses mTLS");
    Some(TlsTarget {
        connector,
        server_name,
        store: store.clone(),
    })
}
