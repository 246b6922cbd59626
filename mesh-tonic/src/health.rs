//! `grpc.health.v1` on both sides: the client checks endpoints, servers report their health.
//!
//! **Client.** A destination whose policy has a `healthCheck` (gRPC is the default kind) gets
//! one checker per endpoint, calling `grpc.health.v1.Health/Check` over its own HTTP/2
//! connection (mTLS like the data path) every `interval`. `NOT_SERVING` (or `UNKNOWN`,
//! `SERVICE_UNKNOWN`), an error or no answer within `timeout` is a failed check; enough of them
//! take the endpoint out of rotation until it passes again (see
//! [`mesh_core::discover::health`]). A server answering `UNIMPLEMENTED` has no health service:
//! it is treated as healthy and no longer checked, as gRPC's client-side health checking does.
//!
//! **Server.** [`health_service`] is tonic-health's reporter and service: add the service to the
//! server, and flip the status with the reporter (on shutdown, set `NOT_SERVING` first so
//! clients drain away before connections close).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (reporter, health) = mesh_tonic::health::health_service();
//! tonic::transport::Server::builder()
//!     .add_service(health)
//!     // .add_service(ReviewsServer::new(app))
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # drop(reporter); Ok(()) }
//! ```

use http::Uri;
use mesh_core::discover::health::{CheckFuture, CheckResult, HealthProbe};
use mesh_hyper::{
    HttpClassifier,
    client::{EndpointTarget, HttpEndpoint},
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus as Wire, health_client::HealthClient,
    health_server::HealthServer,
};
pub use tonic_health::{
    ServingStatus,
    server::{HealthReporter, HealthService},
};

/// tonic-health's reporter and the `grpc.health.v1.Health` service to add to a server; the
/// server as a whole (service `""`) starts `SERVING`.
pub fn health_service() -> (HealthReporter, HealthServer<HealthService>) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    (reporter, service)
}

/// Checks one endpoint with `grpc.health.v1.Health/Check`.
pub(crate) struct GrpcProbe {
    client: HealthClient<HttpEndpoint<tonic::body::Body, HttpClassifier>>,
    service: String,
}

impl GrpcProbe {
    pub(crate) fn new(target: &EndpointTarget, service: &str) -> Self {
        let origin = Uri::builder()
            .scheme("http")
            .authority(target.service().as_str())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Self {
            client: HealthClient::with_origin(target.client(), origin),
            service: service.to_owned(),
        }
    }
}

impl HealthProbe for GrpcProbe {
    fn check(&mut self) -> CheckFuture {
        let mut client = self.client.clone();
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        Box::pin(async move {
            match client.check(request).await {
                Ok(rsp) => match rsp.into_inner().status() {
                    Wire::Serving => CheckResult::Healthy,
                    other => CheckResult::Unhealthy(other.as_str_name().to_owned()),
                },
                Err(status) if status.code() == Code::Unimplemented => {
                    CheckResult::Unsupported(format!("grpc.health.v1: {}", status.message()))
                }
                Err(status) => {
                    CheckResult::Unhealthy(format!("{:?}: {}", status.code(), status.message()))
                }
            }
        })
    }
}
