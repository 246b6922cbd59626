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
