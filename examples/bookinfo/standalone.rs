//! One Bookinfo service (or the load driver) as a process of its own, for running the demo as
//! separate processes:
//!
//! ```text
//! bookinfo SERVICE --listen ADDR --registry file:PATH --config DIR --certs DIR [--version vN] [--instance NAME]
//! bookinfo SERVICE --listen ADDR --registry etcd://HOST:PORT --certs DIR …   (--features etcd)
//! bookinfo load --registry file:PATH --config DIR --certs DIR [--secs N]
//! ```
//!
//! `SERVICE` is productpage, details, reviews or ratings. `--certs DIR` holds the CA
//! (`ca.pem`) and the workload's certificate `bookinfo-<app>.pem` / `bookinfo-<app>-key.pem`
//! (`mesh ca init DIR`, then `mesh ca issue DIR spiffe://cluster.local/ns/default/sa/bookinfo-<app> bookinfo-<app>`);
//! the load driver uses `bookinfo-gateway`.

use std::{path::PathBuf, sync::Arc};

use mesh::core::tls::{TlsFiles, TlsSettings, TlsStore};

use super::{
    cluster,
    registry::{Record, Registry},
    scenario,
    services::Probes,
};

/// The options of a standalone process.
pub struct Options {
    pub listen: Option<String>,
    pub registry: Registry,
    pub certs: PathBuf,
    pub version: String,
    pub instance: Option<String>,
    pub secs: f64,
}

impl Options {
    pub fn parse(args: &mut impl Iterator<Item = String>) -> Result<Options, String> {
        let (mut listen, mut registry, mut etcd, mut config, mut certs) =
            (None, None, None, None, None);
        let (mut version, mut instance, mut secs) = ("v1".to_owned(), None, 10.0);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--listen" => listen = Some(value()?),
                "--registry" => {
                    let v = value()?;
                    match v.strip_prefix("file:") {
                        Some(path) => registry = Some(PathBuf::from(path)),
                        None if v.starts_with("etcd://") || v.starts_with("etcds://") => {
                            etcd = Some(v)
                        }
                        None => {
                            return Err(format!(
                                "--registry {v}: expected file:PATH or etcd://HOST:PORT"
                            ));
                        }
                    }
                }
                "--config" => config = Some(PathBuf::from(value()?)),
                "--certs" => certs = Some(PathBuf::from(value()?)),
                "--version" => version = value()?,
                "--instance" => instance = Some(value()?),
                "--secs" => secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let registry = match (registry, etcd) {
            (Some(endpoints), None) => Registry::File {
                endpoints,
                config: config.ok_or("--config DIR is required with a file registry")?,
            },
            #[cfg(feature = "etcd")]
            (None, Some(url)) => Registry::Etcd(Box::new(
                super::registry::Etcd::at(&url).map_err(|e| e.to_string())?,
            )),
            #[cfg(not(feature = "etcd"))]
            (None, Some(url)) => {
                return Err(format!("--registry {url}: etcd needs `--features etcd`"));
            }
            _ => {
                return Err(
                    "--registry file:PATH (with --config DIR) or etcd://HOST:PORT is required"
                        .into(),
                );
            }
        };
        Ok(Options {
            listen,
            registry,
            certs: certs.ok_or("--certs DIR is required")?,
            version,
            instance,
            secs,
        })
    }

    fn identity(&self, app: &str) -> Result<TlsStore, Box<dyn std::error::Error>> {
        let name = format!("bookinfo-{app}");
        let files = TlsFiles::new(
            self.certs.join(format!("{name}.pem")),
            self.certs.join(format!("{name}-key.pem")),
            self.certs.join("ca.pem"),
        );
        Ok(TlsStore::load(files, TlsSettings::default())?)
    }
}

/// Serves `app` until the process is stopped.
pub async fn service(app: &str, o: Options) -> Result<(), Box<dyn std::error::Error>> {
    let app: &'static str = match app {
        "productpage" => "productpage",
        "details" => "details",
        "reviews" => "reviews",
        "ratings" => "ratings",
        other => return Err(format!("unknown service {other:?}").into()),
    };
    let version: &'static str = Box::leak(o.version.clone().into_boxed_str());
    let w = cluster::workload(&o.registry, app, Some(version), o.identity(app)?).await?;
    let listen = o.listen.as_deref().ok_or("--listen ADDR is required")?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let name = o
        .instance
        .clone()
        .unwrap_or_else(|| format!("{app}-{version}"));
    let addr = listener.local_addr()?;
    // Under etcd the service registers itself (under a lease) for as long as it runs.
    let record = Record {
        service: format!("{app}.default:{}", super::services::PORT),
        instance: name.clone(),
        addr,
        labels: vec![
            ("app".into(), app.into()),
            ("version".into(), version.into()),
        ],
        identity: cluster::principal(app),
    };
    let _registered = o.registry.announce(&record).await?;
    println!("{name} ({}) listening on {addr}", cluster::principal(app));
    cluster::run(app, version, name, w, listener, Arc::new(Probes::default())).await;
    Ok(())
}

/// Drives traffic into productpage as the gateway for `--secs`, then prints what it saw.
pub async fn load(o: Options) -> Result<bool, Box<dyn std::error::Error>> {
    let gateway = cluster::workload(
        &o.registry,
        "istio-ingressgateway",
        None,
        o.identity("gateway")?,
    )
    .await?
    .http();
    let stats = Arc::new(std::sync::Mutex::new(scenario::Stats::default()));
    scenario::drive_for(&gateway, o.secs, &stats).await;
    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "{} requests, {} with reviews; by version {:?}; jason {:?}",
        s.requests, s.ok, s.by_version, s.jason_by_version
    );
    Ok(s.requests > 0 && s.ok == s.requests)
}
