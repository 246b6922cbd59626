//! Bookinfo on one machine: a development CA and a certificate per service account, an
//! endpoints file as the registry, a directory of Istio documents every workload watches, and
//! each service instance in a runtime of its own, so that killing it (dropping the runtime)
//! closes its listener and every connection at once, as a crashed process would.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

use mesh::core::{
    Mesh, SpiffeId,
    config::Workload as Labels,
    dev_ca::DevCa,
    tls::{TlsFiles, TlsSettings, TlsStore},
};

use super::services::{self, Probes, Workload};

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
    /// The CA, the certificates, the endpoints file (listing every instance) and the config
    /// directory with `documents` in it; nothing runs yet.
    pub fn prepare(
        documents: &[(&str, String)],
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
        std::fs::write(dir.path().join("endpoints.yaml"), eps)?;
        std::fs::create_dir(dir.path().join("config"))?;
        let cluster = Cluster {
            dir,
            ca,
            instances: Vec::new(),
            probes: Arc::new(Probes::default()),
        };
        for (name, text) in documents {
            cluster.write(name, text)?;
        }
        Ok((cluster, listeners))
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    /// Writes (or replaces, atomically) a document file in the config directory.
    pub fn write(&self, name: &str, text: &str) -> std::io::Result<()> {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.config_dir().join(name))
    }

    /// Removes a document file.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.config_dir().join(name));
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
    pub fn workload(
        &self,
        app: &str,
        version: Option<&str>,
        identity: &str,
    ) -> Result<Workload, Box<dyn std::error::Error>> {
        workload(
            &self.dir.path().join("endpoints.yaml"),
            &self.config_dir(),
            app,
            version,
            self.identity(identity)?,
        )
    }

    /// Starts every instance of [`TOPOLOGY`] on its listener.
    pub fn start(&mut self, listeners: Vec<TcpListener>) -> Result<(), Box<dyn std::error::Error>> {
        for ((name, app, version), listener) in order().into_iter().zip(listeners) {
            let w = self.workload(app, version, app)?;
            let probes = self.probes.clone();
            let name = name.to_owned();
            self.instances
                .push(spawn(name.clone(), app, version, listener, move |l| {
                    run(app, version.unwrap_or("v1"), name, w, l, probes)
                })?);
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

/// A workload's mesh over the registry file and the documents directory.
pub fn workload(
    endpoints: &Path,
    config: &Path,
    app: &str,
    version: Option<&str>,
    tls: TlsStore,
) -> Result<Workload, Box<dyn std::error::Error>> {
    let mut labels = vec![("app", app)];
    if let Some(v) = version {
        labels.push(("version", v));
    }
    let mesh = Mesh::builder()
        .workload(Labels::new("default", labels))
        .endpoints_file(endpoints, Default::default())
        .istio_config(config)
        .without_dns_fallback()
        .build()?;
    Ok(Workload { mesh, tls })
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
