//! One Bookinfo service (or the load driver) as a process of its own, for running the demo as
//! separate processes:
//!
//! ```text
//! bookinfo SERVICE --listen ADDR --registry file:PATH --config DIR --certs DIR [--version vN] [--instance NAME]
//! bookinfo load --registry file:PATH --config DIR --certs DIR [--secs N]
//! ```
//!
//! `SERVICE` is productpage, details, reviews or ratings. `--certs DIR` holds the CA
//! (`ca.pem`) and the workload's certificate `bookinfo-<app>.pem` / `bookinfo-<app>-key.pem`
//! (`mesh ca init DIR`, then `mesh ca issue DIR spiffe://cluster.local/ns/default/sa/bookinfo-<app> bookinfo-<app>`);
//! the load driver uses `bookinfo-gateway`.

use std::{path::PathBuf, sync::Arc};

use mesh::core::tls::{TlsFiles, TlsSettings, TlsStore};

use super::{cluster, scenario, services::Probes};

/// The options of a standalone process.
pub struct Options {
    pub listen: Option<String>,
    pub registry: PathBuf,
    pub config: PathBuf,
    pub certs: PathBuf,
    pub version: String,
    pub instance: Option<String>,
    pub secs: f64,
}

impl Options {
    pub fn parse(args: &mut impl Iterator<Item = String>) -> Result<Options, String> {
        let (mut listen, mut registry, mut config, mut certs) = (None, None, None, None);
        let (mut version, mut instance, mut secs) = ("v1".to_owned(), None, 10.0);
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--listen" => listen = Some(value()?),
                "--registry" => {
                    let v = value()?;
                    let path = v.strip_prefix("file:").ok_or(format!(
                        "--registry {v}: expected file:PATH (etcd:// needs the etcd feature, not built in here)"
                    ))?;
                    registry = Some(PathBuf::from(path));
                }
                "--config" => config = Some(PathBuf::from(value()?)),
                "--certs" => certs = Some(PathBuf::from(value()?)),
                "--version" => version = value()?,
                "--instance" => instance = Some(value()?),
                "--secs" => secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Options {
            listen,
            registry: registry.ok_or("--registry file:PATH is required")?,
            config: config.ok_or("--config DIR is required")?,
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
    let w = cluster::workload(&o.registry, &o.config, app, Some(version), o.identity(app)?)?;
    let listen = o.listen.as_deref().ok_or("--listen ADDR is required")?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let name = o
        .instance
        .clone()
        .unwrap_or_else(|| format!("{app}-{version}"));
    println!(
        "{name} ({}) listening on {}",
        cluster::principal(app),
        listener.local_addr()?
    );
    cluster::run(app, version, name, w, listener, Arc::new(Probes::default())).await;
    Ok(())
}

/// Drives traffic into productpage as the gateway for `--secs`, then prints what it saw.
pub async fn load(o: Options) -> Result<bool, Box<dyn std::error::Error>> {
    let gateway = cluster::workload(
        &o.registry,
        &o.config,
        "istio-ingressgateway",
        None,
        o.identity("gateway")?,
    )?
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
