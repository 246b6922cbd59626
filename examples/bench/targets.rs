//! What the load generator sends through: a plain hyper-util client, or mesh's client.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use mesh::hyper::MeshClient;

use crate::load::Target;

type Body = Empty<Bytes>;

/// hyper-util's pooled client, as an application without a mesh would use it.
pub struct Raw {
    client: Client<HttpConnector, Body>,
    uri: http::Uri,
}

impl Raw {
    pub fn new(uri: &str) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(http);
        Self {
            client,
            uri: uri.parse().expect("valid bench URI"),
        }
    }
}

pub async fn finish(
    rsp: Result<http::Response<hyper::body::Incoming>, impl std::fmt::Display>,
) -> Result<(), String> {
    let rsp = rsp.map_err(|e| e.to_string())?;
    let status = rsp.status();
    rsp.into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

impl Target for Raw {
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let fut = self.client.request(
            Request::get(self.uri.clone())
                .body(Empty::new())
                .expect("valid request"),
        );
        async move { finish(fut.await).await }
    }
}

/// mesh's client, addressed by logical name.
pub struct Mesh {
    client: MeshClient<Body>,
    uri: http::Uri,
}

impl Mesh {
    pub fn new(client: MeshClient<Body>, uri: &str) -> Self {
        Self {
            client,
            uri: uri.parse().expect("valid bench URI"),
        }
    }
}

impl Target for Mesh {
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let fut = self.client.request(
            Request::get(self.uri.clone())
                .body(Empty::new())
                .expect("valid request"),
        );
        async move { finish(fut.await).await }
    }
}

/// hyper-util's pooled client spread over many endpoints: each request to one of `uris` at
/// random (after a first sweep that visits each in turn, so that every one holds its pooled
/// connection), as an application balancing by hand would send. The `scale` scenario's
/// reference: what many connections cost without mesh.
pub struct RawSpread {
    client: Client<HttpConnector, Body>,
    uris: Vec<http::Uri>,
    sweep: std::sync::atomic::AtomicUsize,
}

impl RawSpread {
    pub fn new(addrs: impl IntoIterator<Item = std::net::SocketAddr>) -> Self {
        let uris = addrs
            .into_iter()
            .map(|a| format!("http://{a}/").parse().expect("valid bench URI"))
            .collect();
        Self {
            client: Raw::new("http://127.0.0.1/").client,
            uris,
            sweep: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Whether every endpoint has been sent to once.
    pub fn swept(&self) -> bool {
        self.sweep.load(std::sync::atomic::Ordering::Relaxed) >= self.uris.len()
    }
}

impl Target for RawSpread {
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let n = self.uris.len();
        let k = self
            .sweep
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let uri = if k < n { k } else { fastrand::usize(..n) };
        let fut = self.client.request(
            Request::get(self.uris[uri].clone())
                .body(Empty::new())
                .expect("valid request"),
        );
        async move { finish(fut.await).await }
    }
}
