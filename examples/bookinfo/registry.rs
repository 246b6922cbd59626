//! Where the Bookinfo workloads find each other and their documents: an endpoints file and a
//! watched directory (the default), or etcd (`--registry etcd://HOST:PORT`, built with
//! `--features etcd`): every instance registers itself under a lease, the documents live under
//! a prefix, and phase changes go through `mesh apply`'s validation.

use std::path::{Path, PathBuf};

use mesh::core::{Mesh, config::Workload as Labels};

/// Where the registry and the documents live.
pub enum Registry {
    /// An endpoints file and a directory of documents.
    File { endpoints: PathBuf, config: PathBuf },
    /// etcd: endpoint records and documents under this run's prefixes.
    #[cfg(feature = "etcd")]
    Etcd(Box<Etcd>),
}

/// What an instance registers (under etcd; the file registry lists instances itself).
#[derive(Clone)]
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub struct Record {
    pub service: String,
    pub instance: String,
    pub addr: std::net::SocketAddr,
    pub labels: Vec<(String, String)>,
    pub identity: mesh::core::SpiffeId,
}

impl Registry {
    /// The mesh of a workload with these labels.
    pub async fn mesh(
        &self,
        labels: Vec<(&str, &str)>,
    ) -> Result<Mesh, Box<dyn std::error::Error>> {
        let workload = Labels::new("default", labels);
        match self {
            Registry::File { endpoints, config } => Ok(Mesh::builder()
                .workload(workload)
                .endpoints_file(endpoints, Default::default())
                .istio_config(config)
                .without_dns_fallback()
                .build()?),
            #[cfg(feature = "etcd")]
            Registry::Etcd(e) => e.mesh(workload).await,
        }
    }

    /// Writes (or replaces) the documents of one file: atomically into the directory, or
    /// through `mesh apply` into etcd (validated with the whole live set first).
    pub async fn write(
        &self,
        name: &str,
        text: &str,
        scratch: &Path,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let tmp = scratch.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        match self {
            Registry::File { config, .. } => std::fs::rename(&tmp, config.join(name))?,
            #[cfg(feature = "etcd")]
            Registry::Etcd(e) => {
                let file = scratch.join(name);
                std::fs::rename(&tmp, &file)?;
                e.apply(&file).await?;
            }
        }
        Ok(())
    }

    /// Removes the documents of one file.
    pub async fn remove(
        &self,
        name: &str,
        scratch: &Path,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let _ = scratch; // where etcd's documents were written from
        match self {
            Registry::File { config, .. } => {
                let _ = std::fs::remove_file(config.join(name));
            }
            #[cfg(feature = "etcd")]
            Registry::Etcd(e) => {
                if let Ok(text) = std::fs::read_to_string(scratch.join(name)) {
                    e.delete(name, &text).await?;
                }
            }
        }
        Ok(())
    }

    /// What an instance does first when it starts: register itself (etcd), kept alive while
    /// the instance runs. Returns a guard to hold.
    pub async fn announce(
        &self,
        _record: &Record,
    ) -> Result<Option<Box<dyn std::any::Any + Send>>, Box<dyn std::error::Error>> {
        match self {
            Registry::File { .. } => Ok(None),
            #[cfg(feature = "etcd")]
            Registry::Etcd(e) => Ok(Some(Box::new(e.register(_record).await?))),
        }
    }

    /// How long a document change takes to reach every workload, with margin: the file
    /// watchers apply one within tens of milliseconds; etcd's watchers too, after `mesh apply`'s
    /// validation round trips (and, at the start, the instances' registrations).
    pub fn settle(&self) -> std::time::Duration {
        match self {
            Registry::File { .. } => std::time::Duration::from_millis(500),
            #[cfg(feature = "etcd")]
            Registry::Etcd(_) => std::time::Duration::from_millis(1500),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Registry::File { endpoints, config } => {
                format!(
                    "registry {}, documents in {}",
                    endpoints.display(),
                    config.display()
                )
            }
            #[cfg(feature = "etcd")]
            Registry::Etcd(e) => format!(
                "etcd {} (services {}, documents {})",
                e.options.display(),
                e.services,
                e.config
            ),
        }
    }
}

#[cfg(feature = "etcd")]
pub use self::etcd::Etcd;

#[cfg(feature = "etcd")]
mod etcd {
    use std::{path::Path, time::Duration};

    use mesh::{
        core::{
            Mesh, ServiceConfig,
            config::{LoadOptions, Workload},
        },
        etcd::{
            ApplyOptions, EndpointRecord, EtcdOptions, EtcdRegistry, Registration, apply,
            document_key, open_config,
        },
    };

    use super::Record;

    /// This run's corner of an etcd.
    pub struct Etcd {
        pub options: EtcdOptions,
        pub services: String,
        pub config: String,
    }

    impl Etcd {
        /// A run of its own under `/bookinfo/<pid>/`, so that runs never see each other.
        pub fn new(url: &str) -> Result<Etcd, Box<dyn std::error::Error>> {
            Self::under(url, &format!("/bookinfo/{}/", std::process::id()))
        }

        /// The shared prefixes `mesh apply` and `mesh get` use by default (for services run
        /// as separate processes).
        pub fn at(url: &str) -> Result<Etcd, Box<dyn std::error::Error>> {
            Self::under(url, "/mesh/")
        }

        fn under(url: &str, root: &str) -> Result<Etcd, Box<dyn std::error::Error>> {
            let options = EtcdOptions::from_url(url)?;
            Ok(Etcd {
                options,
                services: format!("{root}services/"),
                config: format!("{root}config/"),
            })
        }

        pub async fn mesh(&self, workload: Workload) -> Result<Mesh, Box<dyn std::error::Error>> {
            let registry = EtcdRegistry::connect(&self.options, &self.services).await?;
            let config = open_config(
                &self.options,
                &self.config,
                workload.clone(),
                LoadOptions::default(),
            )
            .await?;
            Ok(Mesh::builder()
                .workload(workload)
                .registry(registry, ServiceConfig::default())
                .config_store(config)
                .without_dns_fallback()
                .build()?)
        }

        pub async fn apply(&self, file: &Path) -> Result<(), Box<dyn std::error::Error>> {
            let options = ApplyOptions {
                prefix: self.config.clone(),
                ..ApplyOptions::default()
            };
            apply(&self.options, &[file.to_path_buf()], &options).await?;
            Ok(())
        }

        pub async fn delete(
            &self,
            name: &str,
            text: &str,
        ) -> Result<(), Box<dyn std::error::Error>> {
            let docs = mesh::core::config::split_documents(Path::new(name), text, "default")
                .map_err(|e| e.to_string())?;
            let mut client = self.options.connect().await?;
            for d in docs {
                client
                    .delete(
                        document_key(&self.config, &d.kind, &d.namespace, &d.name),
                        None,
                    )
                    .await?;
            }
            Ok(())
        }

        pub async fn register(
            &self,
            r: &Record,
        ) -> Result<Registration, Box<dyn std::error::Error>> {
            let mut record = EndpointRecord::new(r.addr).identity(&r.identity);
            for (k, v) in &r.labels {
                record = record.label(k, v);
            }
            Ok(Registration::register(
                &self.options,
                &self.services,
                &r.service.parse()?,
                &r.instance,
                record,
                Duration::from_secs(5),
            )
            .await?)
        }
    }
}
