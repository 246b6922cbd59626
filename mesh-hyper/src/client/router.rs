//! The routes of one destination, as the live documents say, ready to send: router → route →
//! distribute → backend (linkerd2-proxy's outbound chain).
//!
//! A [`Routing`] is built for one generation of the configuration and is immutable: a request
//! takes the routing in force when it starts and finishes on it, whatever is swapped in
//! meanwhile. Per request:
//!
//! 1. the first route whose conditions match (none: [`Error::NoRoute`]);
//! 2. its fault: an abort fails the request at once ([`Error::FaultAborted`]), a delay waits
//!    (neither is retried, nor counted against the timeout, as in Envoy);
//! 3. one backend by weight, the route's and the backend's header operations, the rewrite;
//! 4. mirrors, fire and forget ([`mirror`](super::mirror));
//! 5. the route's timeout around its retries (the destination's shared budget) around the
//!    backend's stack.

use std::{future::Future, pin::Pin, sync::Arc};

use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use mesh_core::{
    ServiceName,
    extensions::Routed,
    retry::{DEFAULT_MAX_REPLAY_BYTES, ReplayBody, RetryLayer},
    route::{HttpRoute, RequestView, RouteTable},
    timeout::TimeoutLayer,
};

use super::{
    Dialect, RequestBody,
    backend::Backend,
    mirror::{MirrorTarget, Mirrors},
};
use crate::Error;

/// The boxed future of one request through a destination's routes.
pub(super) type RouteFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, Error>> + Send + 'static>>;

/// One route, ready to send.
pub(super) struct RouteRt<B, D> {
    pub(super) timeout: TimeoutLayer,
    pub(super) retry: RetryLayer<D>,
    /// In the order of the route's distribution.
    pub(super) backends: Box<[Arc<Backend<B, D>>]>,
    pub(super) mirrors: Box<[MirrorTarget<B, D>]>,
    /// Bodies kept for replay (retries) and for mirrors.
    pub(super) replay_bytes: usize,
    /// What each backend's responses say about their route (see `mesh_core::extensions`).
    pub(super) routed: Box<[Routed]>,
}

/// The routes of one destination for one configuration generation.
pub(super) struct Routing<B, D> {
    pub(super) generation: u64,
    pub(super) service: ServiceName,
    pub(super) table: Arc<RouteTable>,
    pub(super) routes: Box<[RouteRt<B, D>]>,
    pub(super) mirrors: Arc<Mirrors>,
}

impl<B: RequestBody, D: Dialect> Routing<B, D> {
    /// Every backend the routes use (for statistics).
    pub(super) fn backends(&self) -> impl Iterator<Item = &Arc<Backend<B, D>>> {
        self.routes
            .iter()
            .flat_map(|r| r.backends.iter().chain(r.mirrors.iter().map(|(_, b)| b)))
    }

    /// Sends a request through the routes. See the [module docs](self).
    pub(super) fn route(self: Arc<Self>, mut req: Request<B>) -> RouteFuture {
        let view = RequestView::of(&req, self.service.port());
        let Some((index, route)) = self.table.find(&view) else {
            return Box::pin(std::future::ready(Err(Error::NoRoute {
                service: self.service.clone(),
                path: req.uri().path().to_owned(),
            })));
        };
        let rt = &self.routes[index];
        let pick = route.backends.pick();
        let weighted = &route.backends.backends()[pick];
        tracing::debug!(service = %self.service, route = route.label(), backend = %weighted.backend, "routed");
        route.headers.request.apply(req.headers_mut());
        weighted.headers.request.apply(req.headers_mut());
        if let Some(rw) = &route.rewrite {
            let prefix_len = match route.matching(&RequestView::of(&req, self.service.port())) {
                Some(Some(m)) => m.uri.as_ref().and_then(|u| u.prefix_len()),
                _ => None,
            };
            if let Err(e) = rewrite(&mut req, rw, prefix_len) {
                return Box::pin(std::future::ready(Err(e)));
            }
        }
        let mut delay = None;
        if let Some(fault) = &route.fault {
            if let Some((abort, pct)) = fault.abort {
                if pct.sample() {
                    tracing::debug!(service = %self.service, route = route.label(), ?abort, "fault injected: abort");
                    return Box::pin(std::future::ready(Err(Error::FaultAborted {
                        service: self.service.clone(),
                        abort,
                    })));
                }
            }
            if let Some((d, pct)) = fault.delay {
                if pct.sample() {
                    tracing::debug!(service = %self.service, route = route.label(), delay = ?d, "fault injected: delay");
                    delay = Some(d);
                }
            }
        }
        let (parts, body) = req.into_parts();
        let body = ReplayBody::new(body, rt.replay_bytes);
        let pending = self.mirrors.start(route, &rt.mirrors, &parts, &body);
        let req = Request::from_parts(parts, body);
        // Only routes a VirtualService wrote say which route took the request.
        let routed = self.table.source.is_some().then(|| rt.routed[pick].clone());
        let response_ops =
            !route.headers.response.is_empty() || !weighted.headers.response.is_empty();
        Box::pin(async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let this = self;
            let rt = &this.routes[index];
            let stack = rt.backends[pick].stack.clone();
            let result = rt.timeout.wrap(req, |req| rt.retry.call(stack, req)).await;
            pending.after_head();
            let mut rsp = result?;
            if let Some(routed) = routed {
                rsp.extensions_mut().insert(routed);
            }
            if response_ops {
                let route = &this.table.routes[index];
                route.headers.response.apply(rsp.headers_mut());
                route.backends.backends()[pick]
                    .headers
                    .response
                    .apply(rsp.headers_mut());
            }
            Ok(rsp)
        })
    }
}

/// Applies `rewrite.uri` and `rewrite.authority`.
fn rewrite<B>(
    req: &mut Request<B>,
    rw: &mesh_core::route::Rewrite,
    prefix_len: Option<usize>,
) -> Result<(), Error> {
    let uri = req.uri().clone();
    let mut parts = uri.into_parts();
    if let Some(path) = rw.path(
        parts.path_and_query.as_ref().map_or("/", |p| p.path()),
        parts.path_and_query.as_ref().and_then(|p| p.query()),
        prefix_len,
    ) {
        parts.path_and_query = Some(path.parse().map_err(|_| Error::MissingAuthority)?);
    }
    if let Some(a) = &rw.authority {
        parts.authority = Some(a.parse().map_err(|_| Error::MissingAuthority)?);
        if let Ok(v) = HeaderValue::from_str(a) {
            if req.headers().contains_key(http::header::HOST) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Error::MissingAuthority)?;
    Ok(())
}

/// How much of a body to keep: what retries need, and what mirrors need (bounded).
pub(super) fn replay_bytes(route: &HttpRoute, retry: &RetryLayer<impl Sized>) -> usize {
    let retries = if retry.policy().attempts > 0 {
        retry.policy().max_replay_bytes
    } else {
        0
    };
    if route.mirrors.is_empty() {
        retries
    } else {
        retries.max(DEFAULT_MAX_REPLAY_BYTES)
    }
}
