//! Protocols spoken over the meshed HTTP client: plain HTTP, and (in mesh-tonic) gRPC.
//!
//! A [`Dialect`] is what a protocol on top of HTTP changes in the client's stack: how results
//! are classified (an HTTP 200 may be a failed gRPC call), the HTTP version it needs, what each
//! attempt must carry (`grpc-timeout`), and how endpoints are health-checked. The stack itself
//! (discovery, balancer, retries, limits, mTLS) is the same for all.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use mesh_core::{
    Endpoint, Protocol, ServiceName,
    classify::Classify,
    discover::health::{CheckFuture, CheckKind, CheckResult, HealthProbe},
    telemetry::StatusKey,
};
use tower::ServiceExt;

use super::{ClientSettings, RequestBody, connect::TlsTarget};
use crate::{Error, HttpClassifier, client::HttpEndpoint};

/// A protocol spoken over the meshed client. See the [module docs](crate::client).
pub trait Dialect: Classify<Response<Incoming>, Error> + Clone + Send + Sync + 'static {
    /// The HTTP version used to reach a destination configured with `configured`.
    fn protocol(&self, configured: Protocol) -> Protocol {
        configured
    }

    /// Called for every attempt just before it is sent to an endpoint (the request's
    /// [`Deadline`](mesh_core::deadline::Deadline) is in its extensions by then).
    fn before_send<B>(&self, _req: &mut Request<B>) {}

    /// Whether a response is a failure whose endpoint must be remembered (as
    /// [`ServedBy`](mesh_core::classify::ServedBy)), so that a retry goes elsewhere. HTTP: 5xx.
    fn marks_endpoint(&self, rsp: &Response<Incoming>) -> bool {
        rsp.status().is_server_error()
    }

    /// The status a response counts as in the request metrics, or `None` when it is only known
    /// later (a gRPC response whose `grpc-status` comes in the trailers: the dialect's response
    /// body then finishes the [`PendingStatus`](mesh_core::telemetry::PendingStatus) it finds in
    /// the response extensions). HTTP: the status class.
    fn telemetry_status(&self, rsp: &Response<Incoming>) -> Option<StatusKey> {
        Some(StatusKey::http(rsp.status().as_u16()))
    }

    /// Whether this dialect can run health checks of `kind`.
    fn supports_health_check(&self, kind: &CheckKind) -> bool {
        matches!(kind, CheckKind::Http(_))
    }

    /// The health probe of one endpoint (only called for supported kinds). The default
    /// runs HTTP checks: `GET path`, healthy on 2xx and 3xx.
    fn health_probe(&self, kind: &CheckKind, target: &EndpointTarget) -> Box<dyn HealthProbe> {
        match kind {
            CheckKind::Http(h) => Box::new(HttpProbe::new(target, &h.path)),
            CheckKind::Grpc(_) => Box::new(|| -> CheckFuture {
                Box::pin(async {
                    CheckResult::Unsupported("this client does not speak gRPC".into())
                })
            }),
        }
    }
}

impl Dialect for HttpClassifier {}

/// Everything needed to open connections to one endpoint the way the client does (address,
/// HTTP version, connection settings, mTLS): health probes use it to reach the endpoint over
/// their own connection.
pub struct EndpointTarget {
    pub(crate) service: ServiceName,
    pub(crate) endpoint: Endpoint,
    pub(crate) protocol: Protocol,
    pub(crate) settings: ClientSettings,
    pub(crate) tls: Option<std::sync::Arc<TlsTarget>>,
}

impl EndpointTarget {
    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// A new client of this endpoint alone (its own connection pool), sending bodies of type
    /// `B`, classifying nothing.
    pub fn client<B: RequestBody>(&self) -> HttpEndpoint<B, HttpClassifier> {
        HttpEndpoint::new(self, HttpClassifier)
    }
}

/// `GET path` against one endpoint.
struct HttpProbe {
    client: HttpEndpoint<Empty<Bytes>, HttpClassifier>,
    uri: http::Uri,
}

impl HttpProbe {
    fn new(target: &EndpointTarget, path: &str) -> Self {
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(target.service.as_str())
            .path_and_query(path)
            .build()
            .unwrap_or_else(|_| http::Uri::from_static("/"));
        Self {
            client: target.client(),
            uri,
        }
    }
}

impl HealthProbe for HttpProbe {
    fn check(&mut self) -> CheckFuture {
        let req = Request::get(self.uri.clone()).body(Empty::new());
        let client = self.client.clone();
        Box::pin(async move {
            let req = match req {
                Ok(r) => r,
                Err(e) => return CheckResult::Unhealthy(format!("invalid check request: {e}")),
            };
            match client.oneshot(req).await {
                Ok(rsp) if rsp.status().is_success() || rsp.status().is_redirection() => {
                    CheckResult::Healthy
                }
                Ok(rsp) => CheckResult::Unhealthy(format!("status {}", rsp.status())),
                Err(e) => CheckResult::Unhealthy(e.to_string()),
            }
        })
    }
}
