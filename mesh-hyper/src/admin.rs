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
        ready(Ok(self.respond(req.method(), req.uri().path())))
    }
}
