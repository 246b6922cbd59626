//! The mesh: which services exist, where their endpoints come from, and their policies.
//!
//! A [`Mesh`] maps the authority of an outgoing request (`reviews.default:9080`) to a
//! [`Destination`]: its normalized [`ServiceName`], its [`ServiceConfig`] and a live
//! [`Subscription`] to its endpoints, and holds the live Istio configuration
//! ([`ConfigStore`]: routes, subsets, ServiceEntries, authorization) when it was given one.
//!
//! A request's host means what Kubernetes' DNS search path makes of it (see
//! [`crate::config::host`]): `reviews`, `reviews.default`, `reviews.default.svc` and
//! `reviews.default.svc.cluster.local` are one service in the workload's namespace `default`;
//! the cluster forms are tried first, then the name as written. For each, in this order:
//!
//! 1. services configured explicitly ([`MeshBuilder::service`]), under their own name or its
//!    cluster form;
//! 2. hosts the Istio documents name (a VirtualService, DestinationRule or ServiceEntry): the
//!    service takes the document's FQDN, and its endpoints come from the ServiceEntry, else
//!    from a service configured in code or an endpoints file under any of the host's
//!    spellings, else from DNS (in Kubernetes, the Service's own name);
//! 3. services listed in an endpoints file ([`MeshBuilder::endpoints_file`]), if the file lists
//!    the name (or one of its spellings) when it is first used;
//!
//! then an IP literal (`10.0.0.7:8080`) is its own single endpoint, and anything else is
//! resolved with DNS (A/AAAA, re-resolved at the TTL), unless
//! [`MeshBuilder::without_dns_fallback`] was set.
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

mod builder;
mod service_entries;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

pub use self::builder::{BuildError, MeshBuilder};
use self::service_entries::ServiceEntrySources;
pub use crate::policy::{Protocol, ServiceConfig};
use crate::{
    ServiceName,
    config::{ConfigSet, ConfigStore, Naming},
    discover::{
        DiscoveryError, DnsOptions, DnsResolver, DnsSource, EndpointSource, Registry, StaticSource,
        Subscription,
    },
    endpoint::Endpoint,
    name::NameError,
};

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
    /// The cluster form of each service configured in code (`reviews.default:9080` →
    /// `reviews.default.svc.cluster.local:9080`), for requests that spell it so.
    service_aliases: HashMap<ServiceName, ServiceName>,
    /// Registries (endpoints files, etcd) and the policies of the services they list.
    registries: Vec<(Arc<dyn Registry>, ServiceConfig)>,
    defaults: ServiceConfig,
    dns: DnsFallback,
    naming: Naming,
    /// The Istio documents in force, when the mesh has any.
    config: Option<ConfigStore>,
    /// Endpoints of the ServiceEntries used so far, updated when the documents change.
    service_entries: ServiceEntrySources,
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

    /// Resolves a normalized service name (see the [module docs](self) for the order).
    pub fn resolve_name(&self, name: ServiceName) -> Result<Destination, ResolveError> {
        let config = self.inner.config.as_ref().map(ConfigStore::current);
        for candidate in self.inner.naming.candidates(name.host()) {
            let Ok(candidate) = ServiceName::parse(&join(&candidate, name.port())) else {
                continue;
            };
            if let Some(dest) = self.lookup(&candidate, config.as_deref())? {
                return Ok(dest);
            }
        }
        Ok(Destination {
            subscription: self.on_demand_subscription(&name)?,
            config: self.inner.defaults.clone(),
            name,
            on_demand: true,
        })
    }

    /// The destination `name` (one spelling of a request's host) stands for, if the mesh
    /// knows it.
    fn lookup(
        &self,
        name: &ServiceName,
        config: Option<&ConfigSet>,
    ) -> Result<Option<Destination>, ResolveError> {
        let inner = &self.inner;
        let code = inner.services.get_key_value(name).or_else(|| {
            inner
                .service_aliases
                .get(name)
                .and_then(|n| inner.services.get_key_value(n))
        });
        if let Some((own, entry)) = code {
            return Ok(Some(Destination {
                subscription: entry.source.subscribe(own),
                config: entry.config.clone(),
                name: own.clone(),
                on_demand: false,
            }));
        }
        if let Some(config) = config.filter(|c| c.knows_host(name.host())) {
            return self.documented(name, config).map(Some);
        }
        Ok(self
            .in_registry(name)
            .map(|(registry, own, config)| Destination {
                subscription: registry.subscribe(&own),
                config,
                name: own,
                on_demand: false,
            }))
    }

    /// A host the Istio documents name: endpoints from its ServiceEntry, else from a service
    /// or file listing one of its spellings, else DNS.
    fn documented(
        &self,
        name: &ServiceName,
        config: &ConfigSet,
    ) -> Result<Destination, ResolveError> {
        let inner = &self.inner;
        if let Some((se, port)) = config.service_entry(name.host(), name.port()) {
            if let Some(sub) = inner.service_entries.subscribe(name, se, port, self)? {
                return Ok(Destination {
                    subscription: sub,
                    config: ServiceConfig {
                        destination: crate::DestinationPolicy {
                            protocol: port.protocol,
                            ..inner.defaults.destination.clone()
                        },
                        ..inner.defaults.clone()
                    },
                    name: name.clone(),
                    on_demand: false,
                });
            }
        }
        for alias in inner.naming.aliases(name.host()) {
            let Ok(alias) = ServiceName::parse(&join(&alias, name.port())) else {
                continue;
            };
            if let Some(entry) = inner.services.get(&alias) {
                return Ok(Destination {
                    subscription: entry.source.subscribe(&alias),
                    config: entry.config.clone(),
                    name: name.clone(),
                    on_demand: false,
                });
            }
        }
        if let Some((registry, own, config)) = self.in_registry(name) {
            return Ok(Destination {
                subscription: registry.subscribe(&own),
                config,
                name: name.clone(),
                on_demand: false,
            });
        }
        Ok(Destination {
            subscription: self.on_demand_subscription(name)?,
            config: inner.defaults.clone(),
            name: name.clone(),
            on_demand: false,
        })
    }

    /// The registry listing `name` or one of its spellings, with the name it uses; else the
    /// first authoritative registry, under `name`.
    fn in_registry(
        &self,
        name: &ServiceName,
    ) -> Option<(&Arc<dyn Registry>, ServiceName, ServiceConfig)> {
        let naming = &self.inner.naming;
        let spellings: Vec<String> = std::iter::once(name.host().to_owned())
            .chain(naming.aliases(name.host()))
            .collect();
        for (registry, config) in &self.inner.registries {
            for listed in registry.services() {
                if listed.port() != name.port() {
                    continue;
                }
                let host = listed.host();
                if spellings.iter().any(|s| s == host)
                    || naming
                        .candidates(host)
                        .first()
                        .is_some_and(|c| c == name.host())
                {
                    return Some((registry, listed, config.clone()));
                }
            }
        }
        let is_ip = name
            .host()
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok();
        self.inner
            .registries
            .iter()
            .find(|(r, _)| r.authoritative() && !is_ip)
            .map(|(r, config)| (r, name.clone(), config.clone()))
    }

    /// The Istio configuration in force, when the mesh reads documents.
    pub fn config(&self) -> Option<&ConfigStore> {
        self.inner.config.as_ref()
    }

    /// The local namespace and domains names are resolved with.
    pub fn naming(&self) -> &Naming {
        &self.inner.naming
    }

    /// The DNS resolver, built on first use (`name`: the service that needs it, for errors).
    pub(crate) fn resolver(&self, name: &ServiceName) -> Result<DnsResolver, ResolveError> {
        match &self.inner.dns {
            DnsFallback::Disabled => Err(ResolveError::Unknown(name.clone())),
            DnsFallback::Given(r) => Ok(r.clone()),
            DnsFallback::System(opts, slot) => {
                let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                match &*slot {
                    Some(r) => Ok(r.clone()),
                    None => {
                        let r = DnsResolver::system(opts.clone()).map_err(|error| {
                            ResolveError::Dns {
                                service: name.clone(),
                                error,
                            }
                        })?;
                        *slot = Some(r.clone());
                        Ok(r)
                    }
                }
            }
        }
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
            let resolver = self.resolver(name)?;
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

    /// The state of the mesh's configuration sources (endpoints files, Istio documents): live
    /// version, rejections and the latest error, for the debug snapshot and metrics.
    pub fn config_sources(&self) -> Vec<crate::telemetry::ConfigSourceSnapshot> {
        let documents = self.inner.config.iter().map(|store| {
            let stats = store.stats();
            crate::telemetry::ConfigSourceSnapshot {
                kind: "istio-documents",
                path: store.origin(),
                version: stats.generation,
                digest: Some(stats.version),
                rejections: stats.rejections,
                last_error: stats.last_error,
                recent_errors: stats
                    .recent_errors
                    .into_iter()
                    .map(|(at, error)| crate::telemetry::ConfigError {
                        at_unix_secs: at,
                        error,
                    })
                    .collect(),
                remote: store.remote_state(),
            }
        });
        self.inner
            .registries
            .iter()
            .map(|(registry, _)| registry.status())
            .chain(documents)
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
                "registries",
                &self
                    .inner
                    .registries
                    .iter()
                    .map(|(r, _)| r.status().path)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// `host:port`, with brackets for an IPv6 host.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
