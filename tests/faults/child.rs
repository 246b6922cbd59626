//! Backends as child processes the tests can SIGSTOP, SIGCONT and SIGKILL, by pid.
//!
//! A child is this test binary run again on the ignored test [`child_backend`], told by
//! environment variables what to be. It prints `LISTENING <addr>` once bound, and `HIT <path>`
//! for every request it starts answering, on stdout (read by [`Child`]).
//!
//! Shared by the `faults` and `soak` test binaries, each of which uses part of it.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mesh::{
    core::tls::{ServerTlsMode, TlsFiles, TlsSettings, TlsStore},
    hyper::server::{Acceptor, ServerSettings, serve_with_settings},
};
use tokio::net::TcpListener;

/// What a child does with its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1 and h2c: `200` with `x-backend: <name>`; `/stream` sends its head and a first
    /// chunk, then the rest after 30 s; `/hang` answers after 30 s.
    Serve,
    /// Accepts each connection and closes it at once.
    AcceptClose,
    /// Accepts, reads the request's first bytes, and resets the connection (RST).
    Reset,
    /// As `Serve`, behind mesh-hyper's server with STRICT mTLS, certificates read (and
    /// watched) from the files given to [`Child::spawn_tls`].
    Mtls,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Serve => "serve",
            Mode::AcceptClose => "accept-close",
            Mode::Reset => "reset",
            Mode::Mtls => "mtls",
        }
    }
}

/// A running child backend; killed (SIGKILL) and reaped when dropped.
pub struct Child {
    pub name: String,
    pub addr: SocketAddr,
    mode: Mode,
    tls: Option<TlsFiles>,
    netns: Option<String>,
    process: std::process::Child,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Child {
    /// Starts a child on a free loopback port.
    pub fn spawn(name: &str, mode: Mode) -> Child {
        Self::spawn_at(name, mode, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts an mTLS child (mode [`Mode::Mtls`]) with these certificate files.
    pub fn spawn_tls(name: &str, tls: TlsFiles) -> Child {
        Self::start(name, Mode::Mtls, "127.0.0.1:0".parse().unwrap(), Some(tls))
    }

    /// Starts a PERMISSIVE (TLS and plaintext on one port) child with these certificate files
    /// and server limits: `max_connections`, and `timeout` for the handshake and for the
    /// request head alike.
    pub fn spawn_limited(
        name: &str,
        tls: TlsFiles,
        max_connections: usize,
        timeout: Duration,
    ) -> Child {
        let handshake = timeout;
        Self::start_with(
            name,
            Mode::Mtls,
            "127.0.0.1:0".parse().unwrap(),
            Some(tls),
            &[
                ("FAULTS_CHILD_PERMISSIVE", "1".into()),
                ("FAULTS_CHILD_MAX_CONNECTIONS", max_connections.to_string()),
                (
                    "FAULTS_CHILD_HANDSHAKE_MS",
                    handshake.as_millis().to_string(),
                ),
                ("FAULTS_CHILD_HEAD_MS", handshake.as_millis().to_string()),
            ],
        )
    }

    /// Starts a child on `addr` (a restart reuses its port).
    pub fn spawn_at(name: &str, mode: Mode, addr: SocketAddr) -> Child {
        Self::start(name, mode, addr, None)
    }

    fn start(name: &str, mode: Mode, addr: SocketAddr, tls: Option<TlsFiles>) -> Child {
        Self::start_with(name, mode, addr, tls, &[])
    }

    /// Starts a child inside the network namespace `netns` (`ip netns exec`, which execs the
    /// test binary: the pid is the child's own), listening on `addr` there.
    pub fn spawn_in(netns: &str, name: &str, addr: SocketAddr) -> Child {
        Self::start_with(
            name,
            Mode::Serve,
            addr,
            None,
            &[("FAULTS_CHILD_NETNS", netns.to_owned())],
        )
    }

    fn start_with(
        name: &str,
        mode: Mode,
        addr: SocketAddr,
        tls: Option<TlsFiles>,
        env: &[(&str, String)],
    ) -> Child {
        let tls_env = tls.as_ref().map(|f| {
            format!(
                "{};{};{}",
                f.cert_chain.display(),
                f.key.display(),
                f.trust_bundle.display()
            )
        });
        let exe = std::env::current_exe().unwrap();
        let netns = env
            .iter()
            .find(|(k, _)| *k == "FAULTS_CHILD_NETNS")
            .map(|(_, v)| v.clone());
        let mut command = match &netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut process = command
            .args([
                "--exact",
                "child::child_backend",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FAULTS_CHILD_NAME", name)
            .env("FAULTS_CHILD_MODE", mode.as_str())
            .env("FAULTS_CHILD_ADDR", addr.to_string())
            .env("FAULTS_CHILD_TLS", tls_env.unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child backend");
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        {
            let (hits, paths) = (hits.clone(), paths.clone());
            std::thread::spawn(move || {
                for line in lines.by_ref().map_while(Result::ok) {
                    // The test harness's "test child::child_backend ... " precedes the first line.
                    if let Some(at) = line.find("LISTENING ") {
                        let _ = tx.send(line[at + 10..].parse::<SocketAddr>().unwrap());
                    } else if let Some(path) = line.strip_prefix("HIT ") {
                        hits.fetch_add(1, Ordering::SeqCst);
                        paths.lock().unwrap().push(path.to_owned());
                    }
                }
            });
        }
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = process.kill();
            let _ = process.wait();
            panic!("child {name} did not start listening");
        };
        Child {
            name: name.to_owned(),
            addr,
            mode,
            tls,
            netns,
            process,
            hits,
            paths,
        }
    }

    pub fn pid(&self) -> i32 {
        self.process.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Freezes the process: the kernel still accepts connections, nothing is answered.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a stopped process run again.
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Kills it and starts it again on the same address.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.netns.is_none(), "restart of a child in a namespace");
        let again = Child::start(&self.name, self.mode, self.addr, self.tls.clone());
        let old = std::mem::replace(self, again);
        drop(old);
    }

    /// Its open file descriptors and resident memory (KiB), read from `/proc/<pid>`.
    pub fn usage(&self) -> (usize, u64) {
        proc_usage(&self.pid().to_string())
    }

    /// Requests it began to answer, as it reported them.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The paths of those requests.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Open file descriptors and resident memory (KiB) of a process, from `/proc/<pid>` (`pid`
/// may be `self`); zeros for a process that is gone.
pub fn proc_usage(pid: &str) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

impl Drop for Child {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL.
        self.kill();
    }
}

/// The child's side: serves as told by the environment, until killed.
#[test]
#[ignore = "run as a child process by the fault tests"]
fn child_backend() {
    let (Ok(name), Ok(mode), Ok(addr)) = (
        std::env::var("FAULTS_CHILD_NAME"),
        std::env::var("FAULTS_CHILD_MODE"),
        std::env::var("FAULTS_CHILD_ADDR"),
    ) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Port reuse after a restart: tokio sets SO_REUSEADDR on Unix.
        let mut bound = None;
        for _ in 0..100 {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    bound = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = bound.expect("bind");
        println!("LISTENING {}", listener.local_addr().unwrap());
        let name: Arc<str> = name.into();
        if mode == "mtls" {
            let files = std::env::var("FAULTS_CHILD_TLS").unwrap();
            let [cert, key, bundle]: [&str; 3] =
                files.split(';').collect::<Vec<_>>().try_into().unwrap();
            let store = TlsStore::load(
                TlsFiles::new(
                    PathBuf::from(cert),
                    PathBuf::from(key),
                    PathBuf::from(bundle),
                ),
                TlsSettings::default(),
            )
            .expect("the child's certificates load");
            // The server's limits, when the test sets them (the flood test).
            let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
            let peer = match std::env::var("FAULTS_CHILD_PERMISSIVE").as_deref() {
                Ok("1") => ServerTlsMode::Permissive,
                _ => ServerTlsMode::Strict,
            };
            let mut acceptor = Acceptor::new(Some(store), peer).unwrap();
            if let Some(ms) = env("FAULTS_CHILD_HANDSHAKE_MS") {
                acceptor = acceptor.with_handshake_timeout(Duration::from_millis(ms));
            }
            let mut settings = ServerSettings::default();
            if let Some(n) = env("FAULTS_CHILD_MAX_CONNECTIONS") {
                settings.max_connections = n as usize;
            }
            if let Some(ms) = env("FAULTS_CHILD_HEAD_MS") {
                settings.request_head_timeout = Duration::from_millis(ms);
            }
            let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(answer(&name, req).await) }
            });
            serve_with_settings(listener, acceptor, settings, svc, std::future::pending()).await;
            return;
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            match mode.as_str() {
                "accept-close" => drop(stream),
                "reset" => {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), stream.readable()).await;
                        let _ = stream.try_read(&mut buf);
                        // A zero linger makes the close a reset (RST); with zero it never blocks.
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    });
                }
                _ => {
                    let _ = stream.set_nodelay(true);
                    let name = name.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let name = name.clone();
                            async move { Ok::<_, Infallible>(answer(&name, req).await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        }
    });
}

async fn answer(
    name: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path().to_owned();
    println!("HIT {path}");
    let _ = req.into_body().collect().await;
    let rsp = Response::builder().header("x-backend", name);
    match path.as_str() {
        "/stream" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"rest")))).await;
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            rsp.body(BoxBody::new(body)).unwrap()
        }
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            rsp.body(BoxBody::new(Full::new(Bytes::from_static(b"late"))))
                .unwrap()
        }
        _ => rsp
            .body(BoxBody::new(Full::new(Bytes::from(name.to_owned()))))
            .unwrap(),
    }
}
