//! Concrete backends: one service's endpoints (all, or a subset's), with the destination-level
//! stack in front of them — breaker → limits → balancer → endpoint pools.
//!
//! A [`Feed`] follows one service's discovery (and its active health checks) and feeds every
//! backend of that service from one task; a [`Backend`] is one (service, subset) pair with its
//! own policy, as Istio programs a cluster per subset.

use std::sync::Arc;

use mesh_core::{
    Balancer, Destination, DestinationPolicy, PolicyError, Protocol, ServiceName,
    balance::{EndpointFeed, Selector},
    breaker::{Breaker, BreakerLayer},
    discover::{
        Subscription,
        health::{CheckKind, health_checked},
    },
    limit::{Limit, LimitLayer},
    retry::ReplayBody,
    tls::{ClientTlsMode, ClientTlsPolicy, TlsStore},
};
use rustls::pki_types::ServerName;
use tower::Layer;

use super::{
    ClientSettings, Dialect, EndpointTarget, HttpEndpoint, RequestBody, connect::TlsTarget,
};
use crate::Error;

pub(super) type Balanced<B, D> = Balancer<HttpEndpoint<ReplayBody<B>, D>, D>;

/// The destination-level stack of one backend.
pub(super) type BackendStack<B, D> = Breaker<Limit<Balanced<B, D>>, D>;

/// One service's endpoints as discovery (and health checks) publish them.
pub(super) struct Feed {
    pub(super) feed: EndpointFeed,
    /// The discovery source's stream before health filtering, for its version and errors.
    pub(super) discovery: Subscription,
    /// The service's own policy (from code, a file or the defaults).
    pub(super) base: mesh_core::ServiceConfig,
}

impl Feed {
    /// The feed of a resolved destination: its subscription, health-checked when its policy
    /// asks for it.
    pub(super) fn new<D: Dialect>(
        dest: Destination,
        settings: &ClientSettings,
        dialect: &D,
    ) -> Result<Self, Error> {
        let Destination {
            name,
            config,
            subscription,
            ..
        } = dest;
        let discovery = subscription.clone();
        let mut subscription = subscription;
        if let Some(policy) = &config.destination.health_check {
            let kind = policy.kind();
            if !dialect.supports_health_check(&kind) {
                let field = match kind {
                    CheckKind::Grpc(_) => "healthCheck.grpc",
                    CheckKind::Http(_) => "healthCheck.http",
                };
                return Err(Error::Policy {
                    service: name,
                    error: PolicyError::new(
                        field,
                        "this kind of health check needs another client (gRPC checks: mesh-tonic's channel)",
                    ),
                });
            }
            let targets = Targets::new(
                &name,
                dialect.protocol(config.destination.protocol),
                &config.destination,
                settings,
            );
            let dialect = dialect.clone();
            subscription = health_checked(
                name.clone(),
                subscription,
                policy.clone(),
                move |ep: &mesh_core::Endpoint| dialect.health_probe(&kind, &targets.target(ep)),
            );
        }
        Ok(Self {
            feed: EndpointFeed::new(name, subscription),
            discovery,
            base: config,
        })
    }

    pub(super) fn name(&self) -> &ServiceName {
        self.feed.service()
    }
}

/// One (service, subset) with its destination policy.
pub(super) struct Backend<B, D> {
    /// The service.
    pub(super) service: ServiceName,
    /// The subset, if the backend is one.
    pub(super) subset: Option<Arc<str>>,
    /// The policy it was built with (a new document set with the same policy reuses it).
    pub(super) policy: DestinationPolicy,
    pub(super) stack: BackendStack<B, D>,
    pub(super) balancer: Balanced<B, D>,
    pub(super) limit: Limit<Balanced<B, D>>,
    pub(super) breaker: Option<BreakerLayer<D>>,
    pub(super) feed: Arc<Feed>,
}

impl<B: RequestBody, D: Dialect> Backend<B, D> {
    /// Builds the stack of one backend over `feed`'s endpoints that `selector` picks.
    pub(super) fn build(
        feed: Arc<Feed>,
        subset: Option<Arc<str>>,
        selector: Selector,
        policy: DestinationPolicy,
        settings: &ClientSettings,
        dialect: &D,
    ) -> Result<Self, Error> {
        let service = feed.name().clone();
        let policy_error = |error| Error::Policy {
            service: service.clone(),
            error,
        };
        let protocol = dialect.protocol(policy.protocol);
        if policy.tls.mode == ClientTlsMode::Mutual && settings.tls.is_none() {
            return Err(policy_error(PolicyError::new(
                "tls.mode",
                "ISTIO_MUTUAL / MUTUAL needs a TLS identity: set ClientSettings::tls",
            )));
        }
        tracing::debug!(%service, subset = subset.as_deref().unwrap_or("(all)"),
            lb = ?policy.balance.policy, ?protocol, "new backend");
        let targets = Targets::new(&service, protocol, &policy, settings);
        let endpoint_dialect = dialect.clone();
        let balancer = Balancer::from_feed(
            &feed.feed,
            service.clone(),
            selector,
            policy.balance.clone(),
            move |ep: &mesh_core::Endpoint| {
                HttpEndpoint::new(&targets.target(ep), endpoint_dialect.clone())
            },
            dialect.clone(),
        );
        let limit = LimitLayer::new(service.clone(), &policy.limits)
            .map_err(policy_error)?
            .layer(balancer.clone());
        let breaker = match &policy.breaker {
            Some(p) => {
                Some(BreakerLayer::new(service.clone(), p, dialect.clone()).map_err(policy_error)?)
            }
            None => None,
        };
        let stack = match &breaker {
            Some(l) => l.layer(limit.clone()),
            None => Breaker::disabled(limit.clone()),
        };
        Ok(Self {
            service,
            subset,
            policy,
            stack,
            balancer,
            limit,
            breaker,
            feed,
        })
    }
}

/// What every endpoint of one backend is reached with.
pub(super) struct Targets {
    service: ServiceName,
    protocol: Protocol,
    tls_policy: ClientTlsPolicy,
    settings: ClientSettings,
}

impl Targets {
    pub(super) fn new(
        service: &ServiceName,
        protocol: Protocol,
        policy: &DestinationPolicy,
        settings: &ClientSettings,
    ) -> Arc<Self> {
        let mut settings = settings.clone();
        if let Some(t) = policy.connect_timeout {
            settings.connect_timeout = t;
        }
        if let Some(t) = policy.idle_timeout {
            settings.pool_idle_timeout = t;
        }
        Arc::new(Self {
            service: service.clone(),
            protocol,
            tls_policy: policy.tls.clone(),
            settings,
        })
    }

    pub(super) fn target(&self, endpoint: &mesh_core::Endpoint) -> EndpointTarget {
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
