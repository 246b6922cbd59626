//! A real etcd on free loopback ports with its own data directory, started and stopped by
//! the test, by pid.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mesh::etcd::{EtcdOptions, EtcdTls};

pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    /// Server certificate, key and the CA bundle clients trust, when it serves TLS.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd; `None` (with a message) when the binary is missing outside CI.
    pub async fn start() -> Option<Self> {
        Self::start_with(None).await
    }

    /// Starts etcd serving TLS to clients with this certificate, key and CA bundle.
    pub async fn start_tls(cert: PathBuf, key: PathBuf, ca: PathBuf) -> Option<Self> {
        Self::start_with(Some((cert, key, ca))).await
    }

    async fn start_with(tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is not installed: scripts/deps installs it (Debian package etcd-server)"
            );
            eprintln!("SKIPPED: etcd is not installed (run scripts/deps as root)");
            return None;
        }
        let mut e = Self {
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            tls,
        };
        e.run().await;
        Some(e)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Options to reach it (over TLS, trusting its CA, when it serves TLS); with the root
    /// user's password once [`enable_auth`](Self::enable_auth) ran.
    pub fn options(&self) -> EtcdOptions {
        let options = EtcdOptions::new([self.url()]);
        let options = match &self.tls {
            Some((_, _, ca)) => options.with_tls(EtcdTls {
                ca: ca.clone(),
                client: None,
                domain: Some("localhost".into()),
            }),
            None => options,
        };
        match &self.root_password() {
            Some(p) => options.with_user("root", p),
            None => options,
        }
    }

    fn root_password(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("root-password")).ok()
    }

    /// Turns on etcd's authentication with a root user; [`options`](Self::options) then logs
    /// in as root.
    pub async fn enable_auth(&self, password: &str) {
        let mut c = self.options().connect().await.unwrap();
        c.user_add("root", password, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
        std::fs::write(self.dir.path().join("root-password"), password).unwrap();
    }

    async fn run(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(["--log-level", "error", "--logger", "zap"])
            .args(self.tls.iter().flat_map(|(cert, key, _)| {
                [
                    "--cert-file".into(),
                    cert.as_os_str().to_owned(),
                    "--key-file".into(),
                    key.as_os_str().to_owned(),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.options().connect().await {
                if c.get("probe", None).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd (SIGKILL, by pid) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of etcd that the test can cut: cut, it closes the connections it
/// carries and every new one at once, as a network partition looks to a client whose
/// reconnects fail; restored, it carries connections again.
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(to: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                cs.lock().unwrap().push(t.abort_handle());
            }
        });
        Proxy {
            addr,
            cut,
            conns,
            task,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
