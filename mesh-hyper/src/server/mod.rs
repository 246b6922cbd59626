//! Layers and helpers for hyper servers: what a sidecar would do to incoming requests.
//!
//! - [`Acceptor`]: mTLS (`STRICT`), mTLS or plaintext on one port (`PERMISSIVE`), or plaintext,
//!   with the peer's SPIFFE ID as [`PeerIdentity`](mesh_core::identity::PeerIdentity);
//! - [`serve`]: accept, handshake, and serve a tower service with hyper (HTTP/1.1 and HTTP/2);
//! - [`MetricsLayer`]: every inbound request counted by caller identity and status, with its
//!   latency and the requests in flight (Linkerd's and Istio's inbound golden signals);
//! - [`AuthzLayer`]: Istio-style authorization policies, `403` on denial;
//! - [`RateLimitLayer`]: per-route and per-caller rate limits, `429` with `Retry-After`;
//! - [`TraceContextLayer`]: W3C trace context from the incoming request to the calls the
//!   handler makes through the mesh client.
//!
//! The local replies speak the caller's protocol: to a gRPC request (`content-type:
//! application/grpc...`) a denial is an HTTP 200 trailers-only response with `grpc-status: 7`
//! (`PERMISSION_DENIED`) and a rate-limited call gets `grpc-status: 8` (`RESOURCE_EXHAUSTED`),
//! as Envoy's filters answer gRPC callers; both carry a `grpc-message` saying why.
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_core::{authz::Authorizer, tls::{ServerTlsMode, TlsFiles, TlsSettings, TlsStore}};
//! use mesh_hyper::server::{Acceptor, AuthzLayer, serve};
//! use tower::ServiceBuilder;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = TlsStore::load(TlsFiles::new("cert.pem", "key.pem", "ca.pem"), TlsSettings::default())?;
//! let authz = Arc::new(Authorizer::new(vec![])?);
//! let app = ServiceBuilder::new()
//!     .layer(AuthzLayer::new(authz))
//!     .service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
//!     });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9080").await?;
//! serve(listener, Acceptor::new(Some(store), ServerTlsMode::Strict)?, app).await;
//! # Ok(()) }
//! ```

mod accept;
mod authz;
mod conn;
mod detect;
mod local_reply;
mod metrics;
mod rate_limit;
mod serve;
mod settings;
mod stream;
mod trace_context;

pub use self::{
    accept::{AcceptError, Accepted, Acceptor, DEFAULT_HANDSHAKE_TIMEOUT},
    authz::{Authz, AuthzLayer},
    detect::{HttpStream, HttpVersion},
    metrics::{Metrics, MetricsBody, MetricsFuture, MetricsLayer},
    rate_limit::{RateLimit, RateLimitLayer, RateLimitRule, RateLimited},
    serve::{WithPeer, serve, serve_with_settings, serve_with_shutdown},
    settings::{
        DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL, DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
        DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS, DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESETS,
        DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_LIST_BYTES,
        DEFAULT_REQUEST_HEAD_TIMEOUT, ServerSettings, WITHDRAW_TIMEOUT,
    },
    stream::ServerStream,
    trace_context::{
        PropagateFuture, PropagateTrace, TRACEPARENT_HEADER, TRACESTATE_HEADER, TraceBody,
        TraceContextLayer, incoming_trace_context,
    },
};
