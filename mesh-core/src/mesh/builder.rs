//! Building a [`Mesh`]: services, endpoints files, Istio documents, DNS.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use super::{DnsFallback, Entry, Inner, Mesh, ServiceConfig, join};
use crate::{
    ServiceName,
    config::{ConfigErrors, ConfigStore, LoadOptions, Workload},
    discover::{DiscoveryError, DnsOptions, DnsResolver, EndpointSource, FileSource, Registry},
    name::NameError,
    policy_error::PolicyError,
};

/// Builds a [`Mesh`].
pub struct MeshBuilder {
    services: Vec<(String, Entry)>,
    files: Vec<(PathBuf, ServiceConfig)>,
    registries: Vec<(Arc<dyn Registry>, ServiceConfig)>,
    defaults: ServiceConfig,
    dns: DnsFallback,
    workload: Workload,
    documents: Vec<PathBuf>,
    load: LoadOptions,
    store: Option<ConfigStore>,
}

impl Default for MeshBuilder {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            files: Vec::new(),
            registries: Vec::new(),
            defaults: ServiceConfig::default(),
            dns: DnsFallback::System(DnsOptions::default(), Mutex::new(None)),
            workload: Workload::default(),
            documents: Vec::new(),
            load: LoadOptions::default(),
            store: None,
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
    /// The Istio documents are invalid (every problem, each with its file, document and
    /// field).
    #[error(transparent)]
    Config(#[from] ConfigErrors),
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

    /// Serves every service `registry` lists (an etcd registry, say) with `config`. Registries
    /// are asked in the order they were added, after endpoints files.
    pub fn registry(mut self, registry: impl Registry, config: ServiceConfig) -> Self {
        self.registries.push((Arc::new(registry), config));
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

    /// The workload this process is: its namespace (short names in requests and documents
    /// resolve in it; default `default`) and labels (what `sourceLabels` and policy selectors
    /// are matched against).
    pub fn workload(mut self, workload: Workload) -> Self {
        self.workload = workload;
        self
    }

    /// The workload's namespace (see [`workload`](Self::workload)).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.workload.naming.namespace = namespace.to_owned();
        self
    }

    /// Reads Istio documents (VirtualService, DestinationRule, ServiceEntry,
    /// AuthorizationPolicy, PeerAuthentication) from a file or a directory, and follows their
    /// changes (see [`crate::config`]). Call it once per path.
    pub fn istio_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.documents.push(path.into());
        self
    }

    /// How the documents are read (lenient: unimplemented fields are warnings).
    pub fn istio_config_options(mut self, options: LoadOptions) -> Self {
        self.load = options;
        self
    }

    /// Uses a configuration store made elsewhere (documents from etcd, or built in code).
    pub fn config_store(mut self, store: ConfigStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Unknown names are an error ([`ResolveError::Unknown`](super::ResolveError::Unknown))
    /// instead of a DNS lookup.
    pub fn without_dns_fallback(mut self) -> Self {
        self.dns = DnsFallback::Disabled;
        self
    }

    /// Validates names and policies, loads endpoint files and Istio documents.
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
        for (registry, config) in &self.registries {
            policy(&registry.status().path, config)?;
        }
        let mut services = HashMap::new();
        for (name, entry) in self.services {
            policy(&name, &entry.config)?;
            let name = ServiceName::parse(&name)?;
            if services.insert(name.clone(), entry).is_some() {
                return Err(BuildError::Duplicate(name));
            }
        }
        let naming = self.workload.naming.clone();
        let mut service_aliases = HashMap::new();
        for name in services.keys() {
            if let Some(fqdn) = naming.candidates(name.host()).into_iter().next() {
                if let Ok(alias) = ServiceName::parse(&join(&fqdn, name.port())) {
                    if alias != *name {
                        service_aliases.insert(alias, name.clone());
                    }
                }
            }
        }
        let mut registries = self
            .files
            .into_iter()
            .map(|(path, config)| {
                let file: Arc<dyn Registry> = Arc::new(FileSource::open(path)?);
                Ok((file, config))
            })
            .collect::<Result<Vec<_>, DiscoveryError>>()?;
        registries.extend(self.registries);
        let config = match (self.store, self.documents.is_empty()) {
            (Some(store), _) => Some(store),
            (None, false) => Some(ConfigStore::open(self.documents, self.workload, self.load)?),
            (None, true) => None,
        };
        let mesh = Mesh {
            inner: Arc::new(Inner {
                services,
                service_aliases,
                registries,
                defaults: self.defaults,
                dns: self.dns,
                naming,
                config,
                service_entries: Default::default(),
                on_demand: Mutex::new(HashMap::new()),
            }),
        };
        if let Some(store) = &mesh.inner.config {
            let weak = Arc::downgrade(&mesh.inner);
            store.on_swap(move |set| match weak.upgrade() {
                Some(inner) => {
                    inner.service_entries.update(set);
                    true
                }
                None => false,
            });
        }
        Ok(mesh)
    }
}
