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
    authz::{Authorizer, AuthzRequest},
    config::ConfigStore,
    identity::PeerIdentity,
    telemetry::{Decision, Telemetry},
};
use tower::Layer;
use tower_service::Service;

/// Decides every request with an [`Authorizer`] (Istio `AuthorizationPolicy` semantics) from
/// the caller's [`PeerIdentity`] (set by the acceptor), the method, the path, the host and port
/// (`Host` / `:authority`) and the headers (`when` conditions on `request.headers[...]`). A
/// denied request gets `403 Forbidden` and never reaches the application; the decision and the
/// rule that made it are an `info` event. gRPC callers get `PERMISSION_DENIED` instead of `403`.
///
/// The policies are fixed ([`new`](Self::new)) or those of the Istio documents in force
/// ([`from_config`](Self::from_config): the AuthorizationPolicies that select this workload,
/// swapped in with every reload; a request is decided by the set in force when it arrives).
#[derive(Clone)]
pub struct AuthzLayer {
    source: Source,
    denied: Arc<AtomicU64>,
    telemetry: Option<Telemetry>,
}

#[derive(Clone)]
enum Source {
    Fixed(Arc<Authorizer>),
    Live(ConfigStore),
}

impl AuthzLayer {
    /// Authorizes with `authorizer`.
    pub fn new(authorizer: Arc<Authorizer>) -> Self {
        Self {
            source: Source::Fixed(authorizer),
            denied: Arc::new(AtomicU64::new(0)),
            telemetry: None,
        }
    }

    /// Authorizes with the AuthorizationPolicies of the documents in `config` that apply to
    /// its workload, as they change.
    pub fn from_config(config: ConfigStore) -> Self {
        Self {
            source: Source::Live(config),
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
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse::<u16>().ok())
            }
            _ => (authority, None),
        };
        let areq = AuthzRequest {
            principal,
            method: req.method(),
            path: req.uri().path(),
            host,
            port,
            headers: Some(req.headers()),
        };
        let decision = match &self.layer.source {
            Source::Fixed(a) => a.decide(&areq),
            Source::Live(c) => c.load().authorizer().decide(&areq),
        };
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
