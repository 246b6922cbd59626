//! Real servers on loopback for the integration tests: hyper backends and a DNS server.
#![allow(dead_code)]

pub mod dns;
pub mod pki;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinSet};

/// How a test backend answers.
#[derive(Clone, Debug)]
pub struct BackendOpts {
    /// Returned in the body and in `x-backend`.
    pub name: String,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Status to answer with.
    pub status: u16,
    /// When set, the status to answer with, changeable while the backend runs.
    pub switch: Option<Arc<std::sync::atomic::AtomicU16>>,
}

impl BackendOpts {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            delay: Duration::ZERO,
            status: 200,
            switch: None,
        }
    }
}

/// A backend whose status the test sets while it runs (starts at 200).
pub async fn switchable(name: &str) -> (Backend, Arc<std::sync::atomic::AtomicU16>) {
    let switch = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let b = backend_with(BackendOpts {
        switch: Some(switch.clone()),
        ..BackendOpts::named(name)
    })
    .await;
    (b, switch)
}

/// A hyper server (HTTP/1.1 and h2c) on loopback that counts its requests. Dropping it stops
/// the listener and closes every connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend on 127.0.0.1 and a free port.
pub async fn backend(name: &str) -> Backend {
    backend_with(BackendOpts::named(name)).await
}

pub async fn backend_with(opts: BackendOpts) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener, opts)
}

/// A backend on a given address (e.g. 127.0.0.2:PORT for DNS tests).
pub async fn backend_at(addr: SocketAddr, name: &str) -> std::io::Result<Backend> {
    let listener = TcpListener::bind(addr).await?;
    Ok(serve(listener, BackendOpts::named(name)))
}

fn serve(listener: TcpListener, opts: BackendOpts) -> Backend {
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let name = opts.name.clone();
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let opts = Arc::new(opts);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let opts = opts.clone();
            let hits = counter.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let opts = opts.clone();
                    let hits = hits.clone();
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned)
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        let version = format!("{:?}", req.version());
                        let path = req.uri().path().to_owned();
                        // Read the request body.
                        let body_len = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        if !opts.delay.is_zero() {
                            tokio::time::sleep(opts.delay).await;
                        }
                        let status = match &opts.switch {
                            Some(s) => s.load(Ordering::SeqCst),
                            None => opts.status,
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("x-body-len", body_len)
                                .header("x-backend", opts.name.as_str())
                                .header("x-seen-host", host)
                                .header("x-seen-version", version)
                                .header("x-seen-path", path)
                                .body(Full::new(Bytes::from(opts.name.clone())))
                                .unwrap(),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend {
        addr,
        name,
        hits,
        task,
    }
}

/// A GET with an empty body.
pub fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

/// Which backend answered (its `x-backend` header).
pub fn backend_of<B>(rsp: &Response<B>) -> String {
    rsp.headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// A mesh-hyper server on loopback behind `acceptor` (its TLS mode) and `authz`: answers 200
/// "ok" with the caller's SPIFFE ID in `x-peer` ("plaintext" without one) and the request's
/// HTTP version in `x-seen-version`. It runs until the test's runtime stops.
pub async fn peer_server(
    acceptor: mesh::hyper::server::Acceptor,
    authz: Option<mesh::core::authz::Authorizer>,
) -> SocketAddr {
    use mesh::core::identity::PeerIdentity;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound listener");
    let app = tower::service_fn(|req: Request<Incoming>| async move {
        let peer = match req.extensions().get::<PeerIdentity>() {
            Some(PeerIdentity(Some(id))) => id.to_string(),
            _ => "plaintext".to_owned(),
        };
        Ok::<_, Infallible>(
            Response::builder()
                .header("x-peer", peer)
                .header("x-seen-version", format!("{:?}", req.version()))
                .body(Full::new(Bytes::from("ok")))
                .expect("a valid response"),
        )
    });
    let authz = mesh::hyper::server::AuthzLayer::new(Arc::new(authz.unwrap_or_default()));
    let svc = tower::ServiceBuilder::new().layer(authz).service(app);
    tokio::spawn(mesh::hyper::server::serve(listener, acceptor, svc));
    addr
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A service config that balances round robin (the default policy otherwise: tests that count
/// requests per backend need turns, not load-aware choices).
pub fn round_robin() -> mesh::core::ServiceConfig {
    use mesh::core::{BalanceConfig, DestinationPolicy, LbPolicy, ServiceConfig};
    ServiceConfig {
        destination: DestinationPolicy {
            balance: BalanceConfig {
                policy: LbPolicy::RoundRobin,
                ..BalanceConfig::default()
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    }
}
