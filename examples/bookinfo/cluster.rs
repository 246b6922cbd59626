//! Bookinfo on one machine: a development CA and a certificate per service account, an
//! endpoints file as the registry, a directory of Istio documents every workload watches, and
//! each service instance in a runtime of its own, so that killing it (dropping the runtime)
//! closes its listener and every connection at once, as a crashed process would.

use std::{
    net::{SocketAddr, TcpListener},
    sync::Arc,
    thread::JoinHandle,
};

use mesh::core::{
    SpiffeId,
    dev_ca::DevCa,
    tls::{TlsFiles, TlsSettings, TlsStore},
};

use super::{
    registry::{Record, Registry},
    services::{self, Probes, Workload},
};

/// One running instance of a service.
pub struct Instance {
    pub name: String,
    pub app: &'static str,
    pub version: Option<&'static str>,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Instance {
    /// Stops it hard: its runtime is dropped with every task and socket in it.
    pub fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The whole application.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
    pub instances: Vec<Instance>,
    /// Counters of the running services.
    pub probes: Arc<Probes>,
    /// Where the workloads find each other and the documents.
    pub registry: Arc<Registry>,
}

/// What runs: (instance name, app, version).
pub const TOPOLOGY: &[(&str, &str, Option<&str>)] = &[
    ("productpage-v1", "productpage", Some("v1")),
    ("details-v1", "details", Some("v1")),
    ("reviews-v1-a", "reviews", Some("v1")),
    ("reviews-v1-b", "reviews", Some("v1")),
    ("reviews-v2", "reviews", Some("v2")),
    ("reviews-v3", "reviews", Some("v3")),
    ("ratings-v1", "ratings", Some("v1")),
];

pub fn principal(app: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/bookinfo-{app}")
        .parse()
        .expect("a SPIFFE ID")
}

impl Cluster {
    /// The CA, the certificates, the registry (an endpoints file listing every instance, or
    /// etcd when `etcd` is set: each instance registers itself when it starts) and the
    /// documents; nothing runs yet.
    pub async fn prepare(
        documents: &[(&str, String)],
        etcd: Option<&str>,
    ) -> Result<(Cluster, Vec<TcpListener>), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = DevCa::new("Bookinfo development CA")?;
        ca.write(&dir.path().join("certs"))?;
        let mut listeners = Vec::new();
        let mut eps = String::from(
            "# Bookinfo's registry: every instance, its labels and identity.\nservices:\n",
        );
        for app in ["productpage", "details", "reviews", "ratings"] {
            eps.push_str(&format!("  {app}.default:{}:\n", services::PORT));
            for (name, a, version) in TOPOLOGY.iter().filter(|(_, a, _)| *a == app) {
                let l = TcpListener::bind("127.0.0.1:0")?;
                eps.push_str(&format!(
                    "    - {{address: {}, labels: {{app: {a}, version: {}, instance: {name}}}, identity: {}}}\n",
                    services::addr(&l),
                    version.unwrap_or("v1"),
                    principal(a)
                ));
                listeners.push(l);
            }
        }
        std::fs::create_dir(dir.path().join("config"))?;
        let registry = match etcd {
            None => {
                std::fs::write(dir.path().join("endpoints.yaml"), eps)?;
                Registry::File {
                    endpoints: dir.path().join("endpoints.yaml"),
                    config: dir.path().join("config"),
                }
            }
            #[cfg(feature = "etcd")]
            Some(url) => Registry::Etcd(Box::new(super::registry::Etcd::new(url)?)),
            #[cfg(not(feature = "etcd"))]
            Some(url) => {
                return Err(format!("--registry {url}: etcd needs `--features etcd`").into());
            }
        };
        let cluster = Cluster {
            dir,
            ca,
            instances: Vec::new(),
            probes: Arc::new(Probes::default()),
            registry: Arc::new(registry),
        };
        for (name, text) in documents {
            cluster.write(name, text).await?;
        }
        Ok((cluster, listeners))
    }

    /// Writes (or replaces) a document file: atomically into the config directory, or through
    /// `mesh apply` into etcd.
    pub async fn write(&self, name: &str, text: &str) -> Result<(), Box<dyn std::error::Error>> {
        self.registry.write(name, text, self.dir.path()).await
    }

    /// Removes a document file.
    pub async fn remove(&self, name: &str) -> Result<(), Box<dyn std::error::Error>> {
        self.registry.remove(name, self.dir.path()).await
    }

    /// The TLS identity of service account `bookinfo-<app>`, minted now.
    pub fn identity(&self, app: &str) -> Result<TlsStore, Box<dyn std::error::Error>> {
        let certs = self.dir.path().join("certs");
        let cert = self
            .ca
            .issue(principal(app), &["localhost", "127.0.0.1"], 1)?;
        let (c, k) = cert.write(&certs, &format!("bookinfo-{app}-{}", fastrand::u32(..)))?;
        Ok(TlsStore::load(
            TlsFiles::new(c, k, certs.join("ca.pem")),
            TlsSettings::default(),
        )?)
    }

    /// A workload: its labels, the registry, the documents, its identity as `app`.
    pub async fn workload(
        &self,
        app: &str,
        version: Option<&str>,
        identity: &str,
    ) -> Result<Workload, Box<dyn std::error::Error>> {
        workload(&self.registry, app, version, self.identity(identity)?).await
    }

    /// Starts every instance of [`TOPOLOGY`] on its listener.
    pub async fn start(
        &mut self,
        listeners: Vec<TcpListener>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        for ((name, app, version), listener) in order().into_iter().zip(listeners) {
            let w = self.workload(app, version, app).await?;
            let probes = self.probes.clone();
            let registry = self.registry.clone();
            let record = Record {
                service: format!("{app}.default:{}", services::PORT),
                instance: name.to_owned(),
                addr: listener.local_addr()?,
                labels: [
                    ("app", app),
                    ("version", version.unwrap_or("v1")),
                    ("instance", name),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                identity: principal(app),
            };
            let name = name.to_owned();
            self.instances.push(spawn(
                name.clone(),
                app,
                version,
                listener,
                move |l| async move {
                    // Registered (etcd) for as long as the instance runs: killed, it vanishes when
                    // its lease runs out.
                    let _registered = match registry.announce(&record).await {
                        Ok(g) => g,
                        Err(e) => return eprintln!("{name}: cannot register: {e}"),
                    };
                    run(app, version.unwrap_or("v1"), name, w, l, probes).await
                },
            )?);
        }
        Ok(())
    }

    pub fn instance(&mut self, name: &str) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.name == name)
    }
}

/// The instances in the order their listeners were bound (grouped by app).
fn order() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    ["productpage", "details", "reviews", "ratings"]
        .iter()
        .flat_map(|app| TOPOLOGY.iter().filter(move |(_, a, _)| a == app).copied())
        .collect()
}

/// A workload's mesh over the registry and the documents.
pub async fn workload(
    registry: &Registry,
    app: &str,
    version: Option<&str>,
    tls: TlsStore,
) -> Result<Workload, Box<dyn std::error::Error>> {
    let mut labels = vec![("app", app)];
    if let Some(v) = version {
        labels.push(("version", v));
    }
    Ok(Workload {
        mesh: registry.mesh(labels).await?,
        tls,
    })
}

/// Serves `app` on `listener` until the runtime stops.
pub async fn run(
    app: &str,
    version: &'static str,
    name: String,
    w: Workload,
    listener: tokio::net::TcpListener,
    probes: Arc<Probes>,
) {
    match app {
        "productpage" => services::productpage(w, listener, probes).await,
        "details" => services::details(w, listener).await,
        "reviews" => services::reviews(w, listener, version, name).await,
        _ => services::ratings(w, listener, probes).await,
    }
}

/// Runs `serve` on a thread and runtime of its own.
fn spawn<F, Fut>(
    name: String,
    app: &'static str,
    version: Option<&'static str>,
    listener: TcpListener,
    serve: F,
) -> std::io::Result<Instance>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                tokio::select! {
                    _ = serve(listener) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime ends every task: connections close as a killed process's do.
            rt.shutdown_background();
        })?;
    Ok(Instance {
        name,
        app,
        version,
        addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}
