//! The meshed gRPC channel: what tonic generated clients are built on.
//!
//! [`MeshChannel`] is a `tower::Service<http::Request<tonic::body::Body>>`, which is what
//! generated clients accept (`ReviewsClient::new(channel)`), bound to one logical service
//! (`reviews.default:9080`). Under it is mesh-hyper's client stack with the [`Grpc`] dialect:
//!
//! - **discovery and balancing** over the service's live endpoints (P2C Peak-EWMA by default),
//!   one multiplexed HTTP/2 connection per endpoint (`ClientSettings::http2_connections_per_endpoint`);
//! - **retries** on `UNAVAILABLE` by default (`retryOn.grpcStatuses`; see also
//!   [`GrpcRetryPolicy`](crate::GrpcRetryPolicy) for gRPC service-config style fields), decided
//!   on the response head, so a call is never retried once a response message has arrived;
//! - **deadlines**: a `grpc-timeout` the caller set (`request.set_timeout(..)`), the
//!   destination's configured timeout, and the deadline of the call being served by this task
//!   (see [`server::DeadlineLayer`](crate::server::DeadlineLayer)) combine, earliest first, and
//!   every attempt carries the time left as `grpc-timeout`;
//! - **outlier ejection** by `grpc-status`, including statuses that arrive in trailers;
//! - **active health checks** (`grpc.health.v1`) when the destination's policy asks for them;
//! - **mTLS** with SPIFFE identities when the client has a TLS identity;
//! - streaming calls pass through unbuffered (request bodies up to 64 KiB are kept for replay
//!   while no response has arrived).
//!
//! Errors are [`tonic::Status`]es with the right code and a message naming the service (see
//! [`status`](crate::status)).
//!
//! ```no_run
//! use mesh_core::Mesh;
//! use mesh_tonic::GrpcClient;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = Mesh::builder().endpoints_file("endpoints.yaml", Default::default()).build()?;
//! let grpc = GrpcClient::new(mesh);
//! // before: let channel = Channel::from_static("http://10.0.0.7:9080").connect().await?;
//! let channel = grpc.channel("reviews.default:9080")?;
//! // let mut reviews = ReviewsClient::new(channel);
//! # let _ = channel; Ok(()) }
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use mesh_core::{
    Mesh, ServiceName,
    classify::{FailureKind, LateOutcome, ResponseClass},
    deadline::Deadline,
    telemetry::{DestinationSnapshot, PendingStatus},
};
use mesh_hyper::{
    ClientSettings, MeshClient,
    client::{self, Target},
};
use pin_project_lite::pin_project;
use tonic::Status;
use tower_service::Service;

use crate::{Grpc, grpc_timeout, status::grpc_status_of, status::to_status};

/// The mesh's gRPC client: shares destinations, connections and load state among the channels
/// made from it. Cheap to clone. One per application, like a tonic `Channel` per target.
#[derive(Clone, Debug)]
pub struct GrpcClient {
    client: MeshClient<tonic::body::Body, Grpc>,
}

impl GrpcClient {
    /// A gRPC client over `mesh` with default connection settings.
    pub fn new(mesh: Mesh) -> Self {
        Self::with_settings(mesh, ClientSettings::default())
    }

    /// A gRPC client over `mesh` with these connection settings (mTLS identity, number of
    /// HTTP/2 connections per endpoint, timeouts).
    pub fn with_settings(mesh: Mesh, settings: ClientSettings) -> Self {
        Self {
            client: MeshClient::with_dialect(mesh, settings, Grpc),
        }
    }

    /// A channel to the logical service `target` (`reviews.default:9080`; an `http://`
    /// prefix is accepted). Fails when the name is invalid, the service unknown, or its
    /// policies cannot be applied.
    pub fn channel(&self, target: &str) -> Result<MeshChannel, Status> {
        let authority = target.strip_prefix("http://").unwrap_or(target);
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        Ok(MeshChannel {
            target: self.client.target(authority).map_err(to_status)?,
        })
    }

    /// Counters and endpoint states of a service, if a channel to it was made.
    pub fn stats(&self, service: &ServiceName) -> Option<DestinationSnapshot> {
        self.client.stats(service)
    }
}

/// A channel to one logical service, for tonic generated clients. Cheap to clone. See the
/// [module docs](self).
#[derive(Clone)]
pub struct MeshChannel {
    target: Target<tonic::body::Body, Grpc>,
}

impl MeshChannel {
    /// A channel to `target` with a client of its own (for one channel per application; to
    /// share connections among channels, make them from one [`GrpcClient`]).
    pub fn new(mesh: Mesh, target: &str) -> Result<Self, Status> {
        GrpcClient::new(mesh).channel(target)
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        self.target.service()
    }

    /// Counters and endpoint states of the service.
    pub fn stats(&self) -> DestinationSnapshot {
        self.target.stats()
    }
}

impl fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshChannel")
            .field("service", self.target.service())
            .finish()
    }
}

impl Service<Request<tonic::body::Body>> for MeshChannel {
    type Response = Response<ResponseBody>;
    type Error = Status;
    type Future = ResponseFuture;

    /// Always ready: the balancer fails fast or waits per call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<tonic::body::Body>) -> Self::Future {
        // The caller's own timeout (tonic writes `Request::set_timeout` as grpc-timeout).
        let caller = req
            .headers()
            .get(&grpc_timeout::GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout::decode);
        if let Some(t) = caller {
            Deadline::after(t).apply(&mut req);
        }
        ResponseFuture {
            inner: self.target.request(req),
        }
    }
}

pin_project! {
    /// Response future of [`MeshChannel`].
    pub struct ResponseFuture {
        #[pin]
        inner: client::ResponseFuture<tonic::body::Body, Grpc>,
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody>, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().inner.poll(cx)) {
            Ok(mut rsp) => {
                let outcome = rsp.extensions_mut().remove::<LateOutcome>();
                let status = rsp.extensions_mut().remove::<PendingStatus>();
                Ok(rsp.map(|inner| ResponseBody {
                    inner,
                    outcome,
                    status,
                }))
            }
            Err(e) => {
                tracing::debug!(error = %e, "call failed");
                Err(to_status(e))
            }
        })
    }
}

pin_project! {
    /// A gRPC response body, streamed as it arrives. When the trailers come, their
    /// `grpc-status` is reported to the endpoint's outlier detection and counted in the
    /// request metrics.
    pub struct ResponseBody {
        #[pin]
        inner: Incoming,
        outcome: Option<LateOutcome>,
        status: Option<PendingStatus>,
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(status) = this.status.as_ref() {
            if let Some(key) = mesh_hyper::grpc::status_of_frame(&frame) {
                status.finish(key);
                *this.status = None;
            }
        }
        if let Some(outcome) = this.outcome.as_ref() {
            let class = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(|t| match grpc_status_of(t) {
                    Some(0) => ResponseClass::Success,
                    Some(code) => ResponseClass::Failure(FailureKind::Grpc(code)),
                    None => ResponseClass::Failure(FailureKind::Other),
                }),
                // A reset stream or a body ending without trailers: the call failed.
                Some(Err(_)) | None => Some(ResponseClass::Failure(FailureKind::Other)),
            };
            if let Some(class) = class {
                outcome.report(class);
                *this.outcome = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}
