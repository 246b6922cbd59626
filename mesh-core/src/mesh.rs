//! The mesh: which services exist, where their endpoints come from, and their policies.
//!
//! A [`Mesh`] maps the authority of an outgoing request (`reviews.default:9080`) to a
//! [`Destination`]: its normalized [`ServiceName`], its [`ServiceConfig`] and a live
//! [`Subscription`] to its endpoints. Names are looked up in this order:
//!
//! 1. services configured explicitly ([`MeshBuilder::service`]);
//! 2. services listed in an endpoints file ([`MeshBuilder::endpoints_file`]), if the file lists
//!    the name when it is first used;
//! 3. an IP literal (`10.0.0.7:8080`) is its own single endpoint;
//! 4. anything else is resolved with DNS (A/AAAA, re-resolved at the TTL), unless
//!    [`MeshBuilder::without_dns_fallback`] was set.
//!
//! The `Mesh` is protocol-agnostic; mesh-hyper and mesh-tonic build clients from it.
//!
//! ```
//! use mesh_core::{Endpoint, Mesh, discover::StaticSource};
//!
//! let mesh = Mesh::builder()
//!     .service("reviews.default:9080", StaticSource::new(vec![
//!         Endpoint::new("10.0.0.1:9080".parse().unwrap()),
//!         Endpoint::new("10.0.0.2:9080".parse().unwrap()),
//!     ]).unwrap())
//!     .build()
//!     .unwrap();
//! let dest = mesh.resolve("Reviews.Default:9080", 80).unwrap();
//! assert_eq!(dest.name.as_str(), "reviews.default:9080");
//! assert_eq!(dest.subscription.snapshot().endpoints.unwrap().len(), 2);
//! ```

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use crate::{
    ServiceName,
    balance::BalanceConfig,
    breaker::BreakerPolicy,
    discover::{
        DiscoveryError, DnsOptions, DnsResolver, DnsSource, EndpointSource, FileSource,
        StaticSource, Subscription, health::HealthCheckPolicy,
    },
    endpoint::Endpoint,
    limit::LimitPolicy,
    name::NameError,
    policy_error::PolicyError,
    retry::RetryPolicy,
    tls::ClientTlsPolicy,
};

/// Which HTTP version is spoken to a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, a pool of connections per endpoint (the default, as for Istio
    /// ports named `http`).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c), requests multiplexed on one connection per endpoint
    /// (Istio ports named `http2` or `grpc`).
    Http2,
}

/// Policies of one destination service. Every field has a default; see each type.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Load balancing and outlier ejection.
    pub balance: BalanceConfig,
    /// HTTP version to the endpoints.
    pub protocol: Protocol,
    /// Overall request timeout (none by default, as in Istio and Linkerd).
    #[serde(with = "crate::duration::serde_opt")]
    pub timeout: Option<std::time::Duration>,
    /// Retries, budget, hedging.
    pub retries: RetryPolicy,
    /// Concurrency, queue and rate limits.
    pub limits: LimitPolicy,
    /// A service-level circuit breaker (off by default).
    pub breaker: Option<BreakerPolicy>,
    /// mTLS to the endpoints.
    pub tls: ClientTlsPolicy,
    /// Active health checks of the endpoints (off by default, as in Istio: outlier ejection
    /// is the passive check that is always on).
    pub health_check: Option<HealthCheckPolicy>,
}

impl ServiceConfig {
    /// Checks every policy; the error names the field (`retries.budget.ttl`).
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.balance.validate().map_err(|e| e.within("balance"))?;
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::new("timeout", "must be greater than zero"));
        }
        self.retries.validate().map_err(|e| e.within("retries"))?;
        self.limits.validate().map_err(|e| e.within("limits"))?;
        if let Some(b) = &self.breaker {
            b.validate().map_err(|e| e.within("breaker"))?;
        }
        if let Some(h) = &self.health_check {
            h.validate().map_err(|e| e.within("healthCheck"))?;
        }
        Ok(())
    }
}

/// A service resolved for use: its name, policies and endpoints.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The normalized name.
    pub name: ServiceName,
    /// Its policies.
    pub config: ServiceConfig,
    /// Its endpoints, live.
    pub subscription: Subscription,
    /// Whether the mesh was not told about this service and resolved it on demand (DNS
    /// fallback, IP literal): a client may drop such a destination when it falls idle.
    pub on_demand: bool,
}

/// A request's authority names no service the mesh can resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The authority is not a valid `host[:port]`.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The name is not configured and DNS fallback is off.
    #[error("unknown service {0:?}: not configured, and DNS fallback is disabled")]
    Unknown(ServiceName),
    /// DNS fallback is needed but no resolver could be built.
    #[error("cannot resolve {service:?}: {error}")]
    Dns {
        /// The service.
        service: ServiceName,
        /// Why DNS is unavailable.
        error: DiscoveryError,
    },
}

#[derive(Clone)]
struct Entry {
    source: Arc<dyn EndpointSource>,
    config: ServiceConfig,
}

/// The mesh. Cheap to clone; clones share everything. See the [module docs](self).
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    services: HashMap<ServiceName, Entry>,
    files: Vec<(FileSource, ServiceConfig)>,
    defaults: ServiceConfig,
    dns: DnsFallback,
    /// Sources created on demand for names resolved by DNS or given as IP literals; those
    /// nobody listens to are forgotten when a new one is added.
    on_demand: Mutex<HashMap<ServiceName, Arc<dyn EndpointSource>>>,
}

enum DnsFallback {
    Disabled,
    /// Built on first use from the system configuration.
    System(DnsOptions, Mutex<Option<DnsResolver>>),
    Given(DnsResolver),
}

impl Mesh {
    /// Starts building a mesh.
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// Resolves a request authority (`host[:port]`; `default_port` is the scheme's) to its
    /// destination. Every call for one name shares one source.
    pub fn resolve(&self, authority: &str, default_port: u16) -> Result<Destination, ResolveError> {
        let name = ServiceName::from_authority(authority, default_port)?;
        self.resolve_name(name)
    }

    /// Resolves a normalized service name.
    pub fn resolve_name(&self, name: ServiceName) -> Result<Destination, ResolveError> {
        let inner = &self.inner;
        if let Some(entry) = inner.services.get(&name) {
            return Ok(Destination {
                subscription: entry.source.subscribe(&name),
                config: entry.config.clone(),
                name,
                on_demand: false,
            });
        }
        for (file, config) in &inner.files {
            if file.services().contains(&name) {
                return Ok(Destination {
                    subscription: file.subscribe(&name),
                    config: config.clone(),
                    name,
                    on_demand: false,
                });
            }
        }
        Ok(Destination {
            subscription: self.on_demand_subscription(&name)?,
            config: inner.defaults.clone(),
            name,
            on_demand: true,
        })
    }

    /// A subscription to the on-demand source of `name` (made under the cache's lock, so that
    /// a new source is never seen idle and forgotten before its first subscriber).
    fn on_demand_subscription(&self, name: &ServiceName) -> Result<Subscription, ResolveError> {
        let inner = &self.inner;
        let mut cache = inner.on_demand.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(name) {
            return Ok(s.subscribe(name));
        }
        let source: Arc<dyn EndpointSource> = if let Some(ip) = name.ip() {
            let ep = Endpoint::new(std::net::SocketAddr::new(ip, name.port()));
            Arc::new(StaticSource::new(vec![ep]).expect("one endpoint has no duplicate"))
        } else {
            let resolver = match &inner.dns {
                DnsFallback::Disabled => return Err(ResolveError::Unknown(name.clone())),
                DnsFallback::Given(r) => r.clone(),
                DnsFallback::System(opts, slot) => {
                    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                    match &*slot {
                        Some(r) => r.clone(),
                        None => {
                            let r = DnsResolver::system(opts.clone()).map_err(|error| {
                                ResolveError::Dns {
                                    service: name.clone(),
                                    error,
                                }
                            })?;
                            *slot = Some(r.clone());
                            r
                        }
                    }
                }
            };
            tracing::debug!(service = %name, "unknown service: resolving with DNS");
            Arc::new(DnsSource::host(resolver, name.host(), name.port()))
        };
        // Forget the sources nobody subscribes to any more (their clients dropped them), so
        // that a client calling ever new names does not grow this cache without bound.
        cache.retain(|_, s| !s.is_idle());
        let subscription = source.subscribe(name);
        cache.insert(name.clone(), source);
        Ok(subscription)
    }

    /// The state of the mesh's configuration sources (endpoints files): live version,
    /// rejections and the latest error, for the debug snapshot and metrics.
    pub fn config_sources(&self) -> Vec<crate::telemetry::ConfigSourceSnapshot> {
        self.inner
            .files
            .iter()
            .map(|(file, _)| crate::telemetry::ConfigSourceSnapshot {
                kind: "endpoints-file",
                path: file.path().display().to_string(),
                version: file.reloads() + 1,
                rejections: file.rejections(),
                last_error: file.last_error().map(|e| e.to_string()),
                recent_errors: file
                    .recent_errors()
                    .into_iter()
                    .map(|(at, e)| crate::telemetry::ConfigError {
                        at_unix_secs: at
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                        error: e.to_string(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Whether `other` is a clone of this mesh.
    pub fn same(&self, other: &Mesh) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Names configured explicitly.
    pub fn configured_services(&self) -> Vec<ServiceName> {
        let mut v: Vec<_> = self.inner.services.keys().cloned().collect();
        v.sort();
        v
    }
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("services", &self.configured_services())
            .field(
                "files",
                &self
                    .inner
                    .files
                    .iter()
                    .map(|(f, _)| f.path())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`Mesh`].
pub struct MeshBuilder {
    services: Vec<(String, Entry)>,
    files: Vec<(PathBuf, ServiceConfig)>,
    defaults: ServiceConfig,
    dns: DnsFallback,
}

impl Default for MeshBuilder {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            files: Vec::new(),
            defaults: ServiceConfig::default(),
            dns: DnsFallback::System(DnsOptions::default(), Mutex::new(None)),
        }
    }
}

/// The mesh could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A configured service name is invalid.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A service is configured twice.
    #[error("service {0:?} is configured twice")]
    Duplicate(ServiceName),
    /// An endpoints file could not be loaded.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// A service's policies are invalid.
    #[error("service {service:?}: {error}")]
    Policy {
        /// The service (or `defaults`).
        service: String,
        /// The invalid field.
        error: PolicyError,
    },
}

impl MeshBuilder {
    /// Adds a service (`host:port`) with the default policies.
    pub fn service(self, name: impl Into<String>, source: impl EndpointSource) -> Self {
        let config = self.defaults.clone();
        self.service_with(name, source, config)
    }

    /// Adds a service with its own policies.
    pub fn service_with(
        mut self,
        name: impl Into<String>,
        source: impl EndpointSource,
        config: ServiceConfig,
    ) -> Self {
        self.services.push((
            name.into(),
            Entry {
                source: Arc::new(source),
                config,
            },
        ));
        self
    }

    /// Serves every service listed in an endpoints file (see [`FileSource`]) with `config`.
    pub fn endpoints_file(mut self, path: impl Into<PathBuf>, config: ServiceConfig) -> Self {
        self.files.push((path.into(), config));
        self
    }

    /// Policies for services resolved on demand (DNS fallback, IP literals), and the starting
    /// point of [`service`](Self::service). Set it before adding services.
    pub fn defaults(mut self, config: ServiceConfig) -> Self {
        self.defaults = config;
        self
    }

    /// Resolve unknown names with this resolver instead of the system's.
    pub fn dns(mut self, resolver: DnsResolver) -> Self {
        self.dns = DnsFallback::Given(resolver);
        self
    }

    /// Resolve unknown names with the system resolver and these refresh options.
    pub fn dns_options(mut self, options: DnsOptions) -> Self {
        self.dns = DnsFallback::System(options, Mutex::new(None));
        self
    }

    /// Unknown names are an error ([`ResolveError::Unknown`]) instead of a DNS lookup.
    pub fn without_dns_fallback(mut self) -> Self {
        self.dns = DnsFallback::Disabled;
        self
    }

    /// Validates names and policies, and loads endpoint files.
    pub fn build(self) -> Result<Mesh, BuildError> {
        let policy = |service: &str, config: &ServiceConfig| {
            config.validate().map_err(|error| BuildError::Policy {
                service: service.to_owned(),
                error,
            })
        };
        policy("defaults", &self.defaults)?;
        for (path, config) in &self.files {
            policy(&path.display().to_string(), config)?;
        }
        let mut services = HashMap::new();
        for (name, entry) in self.services {
            policy(&name, &entry.config)?;
            let name = ServiceName::parse(&name)?;
            if services.insert(name.clone(), entry).is_some() {
                return Err(BuildError::Duplicate(name));
            }
        }
        let files = self
            .files
            .into_iter()
            .map(|(path, config)| Ok((FileSource::open(path)?, config)))
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        Ok(Mesh {
            inner: Arc::new(Inner {
                services,
                files,
                defaults: self.defaults,
                dns: self.dns,
                on_demand: Mutex::new(HashMap::new()),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_configured_ip_literal_and_rejects_unknown() {
        let mesh = Mesh::builder()
            .service(
                "a:80",
                StaticSource::new(vec![Endpoint::new("127.0.0.1:1".parse().unwrap())]).unwrap(),
            )
            .without_dns_fallback()
            .build()
            .unwrap();
        assert_eq!(mesh.resolve("A", 80).unwrap().name.as_str(), "a:80");
        let ip = mesh.resolve("127.0.0.1:7000", 80).unwrap();
        let eps = ip.subscription.snapshot().endpoints.unwrap();
        assert_eq!(eps.iter().next().unwrap().addr.port(), 7000);
        assert!(matches!(
            mesh.resolve("b:80", 80),
            Err(ResolveError::Unknown(_))
        ));
        assert!(matches!(
            mesh.resolve("b c", 80),
            Err(ResolveError::Name(_))
        ));
    }

    #[test]
    fn on_demand_sources_nobody_listens_to_are_forgotten() {
        let mesh = Mesh::builder().without_dns_fallback().build().unwrap();
        let cached = || mesh.inner.on_demand.lock().unwrap().len();
        let first = mesh.resolve("127.0.0.1:7001", 80).unwrap();
        assert!(first.on_demand);
        let second = mesh.resolve("127.0.0.1:7002", 80).unwrap();
        assert_eq!(cached(), 2, "both are listened to");
        drop(first);
        let _third = mesh.resolve("127.0.0.1:7003", 80).unwrap();
        assert_eq!(cached(), 2, "the first was forgotten");
        // Still listened to: shared by a second resolution of the same name.
        let again = mesh.resolve("127.0.0.1:7002", 80).unwrap();
        assert_eq!(
            again.subscription.snapshot().endpoints,
            second.subscription.snapshot().endpoints
        );
        assert_eq!(cached(), 2);
    }

    #[test]
    fn rejects_duplicate_and_invalid_names() {
        let s = || StaticSource::new(vec![]).unwrap();
        let dup = Mesh::builder()
            .service("a:80", s())
            .service("A:80", s())
            .build();
        assert!(matches!(dup, Err(BuildError::Duplicate(_))));
        let bad = Mesh::builder().service("a", s()).build();
        assert!(matches!(bad, Err(BuildError::Name(_))));
    }
}
