//! A tiny admin endpoint: `/metrics` (OpenMetrics) and `/mesh/debug` (the JSON snapshot).
//!
//! Mount [`AdminService`] on its own port (as Linkerd's and Envoy's admin ports are) or route
//! those two paths to it from the application's router. It answers `GET` only; anything else
//! is `404` / `405`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_core::telemetry::{Registry, Telemetry};
//! use mesh_hyper::{admin::AdminService, server::{Acceptor, serve}};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut registry = Registry::default();
//! let telemetry = Telemetry::new(&mut registry);
//! // ... build clients with ClientSettings { telemetry: Some(telemetry.clone()), .. } ...
//! let admin = AdminService::new(Arc::new(registry), telemetry);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9901").await?;
//! serve(listener, Acceptor::plaintext(), admin).await;
//! # Ok(()) }
//! ```

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use mesh_core::telemetry::{Registry, Telemetry};
use tower_service::Service;

/// The OpenMetrics text content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `/metrics` from a registry and `/mesh/debug` from a [`Telemetry`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminService {
    registry: Arc<Registry>,
    telemetry: Telemetry,
}

impl AdminService {
    /// Serves `registry` (the one `telemetry` was registered in, plus whatever else the
    /// application registered) and `telemetry`'s snapshot.
    pub fn new(registry: Arc<Registry>, telemetry: Telemetry) -> Self {
        Self {
            registry,
            telemetry,
        }
    }

    /// The response to one admin request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        self.respond_uri(method, path, None)
    }

    /// The response to one admin request, with its query string (`/mesh/explain` reads it).
    pub fn respond_uri(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Full<Bytes>> {
        if path == "/mesh/explain" {
            return self.explain(query.unwrap_or(""));
        }
        if path != "/metrics" && path != "/mesh/debug" {
            return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
        }
        if method != Method::GET && method != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        if path == "/metrics" {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &self.registry) {
                Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "metrics encoding failed\n".into(),
                ),
            }
        } else {
            match serde_json::to_string_pretty(&self.telemetry.snapshot()) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("snapshot encoding failed: {e}\n"),
                ),
            }
        }
    }
}

impl AdminService {
    /// `GET /mesh/explain?method=GET&url=http://reviews:9080/r/1&header=end-user:jason&as=PRINCIPAL`:
    /// the explanation `mesh explain` prints, for the live documents of the tracked mesh and
    /// the endpoints its discovery knows now (JSON; `&format=text` for text).
    fn explain(&self, query: &str) -> Response<Full<Bytes>> {
        let mut method = "GET".to_owned();
        let (mut url, mut principal, mut text) = (None, None, false);
        let mut req = Request::builder();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "method" => method = v,
                "url" => url = Some(v),
                "as" => principal = Some(v),
                "format" => text = v == "text",
                "header" => match v.split_once(':') {
                    Some((n, val)) => req = req.header(n.trim(), val.trim()),
                    None => return bad("header=NAME:VALUE"),
                },
                _ => return bad(&format!("unknown parameter {k:?}")),
            }
        }
        let Some(url) = url else {
            return bad("url=http://service:port/path is required");
        };
        let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
            return bad("method is not an HTTP method");
        };
        let Ok(request) = req.method(m).uri(url.as_str()).body(()) else {
            return bad("url or a header is invalid");
        };
        let principal = match principal.map(|p| {
            let full = if p.starts_with("spiffe://") {
                p
            } else {
                format!("spiffe://{p}")
            };
            full.parse::<mesh_core::SpiffeId>()
        }) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => return bad(&e.to_string()),
        };
        let meshes = self.telemetry.meshes();
        let Some((mesh, store)) = meshes.iter().find_map(|m| m.config().map(|c| (m, c))) else {
            return bad("no tracked mesh reads Istio documents");
        };
        let set = store.current();
        let endpoints = |name: &mesh_core::ServiceName| {
            mesh.resolve_name(name.clone())
                .ok()
                .and_then(|d| d.subscription.snapshot().endpoints)
        };
        let e = mesh_core::config::explain(
            &set,
            &mesh_core::config::ExplainInput {
                request: &request,
                principal: principal.as_ref(),
                endpoints: &endpoints,
            },
        );
        if text {
            return reply(StatusCode::OK, "text/plain", e.to_string());
        }
        match serde_json::to_string_pretty(&e) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(err) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{err}\n"),
            ),
        }
    }
}

fn bad(why: &str) -> Response<Full<Bytes>> {
    reply(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n"))
}

/// `%XX` and `+` decoding of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    rsp
}

impl<B> Service<Request<B>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond_uri(
            req.method(),
            req.uri().path(),
            req.uri().query(),
        )))
    }
}
