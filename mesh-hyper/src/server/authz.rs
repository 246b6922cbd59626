//! Authorization of incoming requests (403, or gRPC `PERMISSION_DENIED`, on denial).

use std::{
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use futures_util::future::Either;
use mesh_core::{
    authz::Authorizer,
    identity::PeerIdentity,
    telemetry::{Decision, Telemetry},
};
use tower::Layer;
use tower_service::Service;

/// Decides every request with an [`Authorizer`] (Istio `AuthorizationPolicy` semantics) from
/// the caller's [`PeerIdentity`] (set by the acceptor), the method and the path. A denied request
/// gets `403 Forbidden` and never reaches the application; the decision and the rule that made it
/// are an `info` event. gRPC callers get `PERMISSION_DENIED` instead of `403`.
#[derive(Clone)]
pub struct AuthzLayer {
    authorizer: Arc<Authorizer>,
    denied: Arc<AtomicU64>,
    telemetry: Option<Telemetry>,
}

impl AuthzLayer {
    /// Authorizes with `authorizer`.
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self {
            authorizer,
            denied: Arc::new(AtomicU64::new(0)),
            telemetry: None,
        }
    }

    /// Also counts every decision by caller identity in `telemetry`
    /// (`mesh_server_requests_total{caller, decision}`).
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Requests denied so far.
    pub fn denied(&self) -> u64 {
        self.denied.load(Relaxed)
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`AuthzLayer`].
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for Authz<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
    ResB: Default,
{
    type Response = http::Response<ResB>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<ResB>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let principal = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.as_ref());
        let decision = self
            .layer
            .authorizer
            .evaluate(principal, req.method(), req.uri().path());
        if let Some(t) = &self.layer.telemetry {
            let d = if decision.allowed {
                Decision::Allow
            } else {
                Decision::Deny
            };
            t.server().record(principal, d);
        }
        if decision.allowed {
            return Either::Left(self.inner.call(req));
        }
        self.layer.denied.fetch_add(1, Relaxed);
        let grpc = crate::grpc::is_grpc(req.headers());
        tracing::info!(principal = ?principal.map(|p| p.as_str()), method = %req.method(),
            path = req.uri().path(), rule = %decision.by, grpc, "request denied");
        let message = match principal {
            Some(p) => format!("{p} may not call {} ({})", req.uri().path(), decision.by),
            None => format!(
                "anonymous caller may not call {} ({})",
                req.uri().path(),
                decision.by
            ),
        };
        let rsp = super::local_reply::local_reply(grpc, http::StatusCode::FORBIDDEN, 7, &message);
        Either::Right(ready(Ok(rsp)))
    }
}
