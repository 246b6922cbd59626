//! Server-side rate limiting per route and per caller.

use std::{
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
};

use futures_util::future::Either;
use governor::{
    DefaultKeyedRateLimiter, RateLimiter,
    clock::{Clock, DefaultClock},
};
pub use mesh_core::limit::RateLimit;
use mesh_core::{PolicyError, identity::PeerIdentity};
use serde::{Deserialize, Serialize};
use tower::Layer;
use tower_service::Service;

/// One rate-limit rule: requests whose path starts with `pathPrefix` share `rate` — all
/// together, or per caller identity with `perCaller` (the verified SPIFFE ID the TLS acceptor
/// put in the request; callers without one share the bucket `anonymous`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitRule {
    /// Path prefix the rule applies to (`/` for everything).
    #[serde(default = "root")]
    pub path_prefix: String,
    /// One bucket per caller identity instead of one for all.
    #[serde(default)]
    pub per_caller: bool,
    /// The rate.
    pub rate: RateLimit,
}

fn root() -> String {
    "/".to_owned()
}

struct Rule {
    prefix: String,
    per_caller: bool,
    limiter: DefaultKeyedRateLimiter<String>,
}

struct Shared {
    rules: Vec<Rule>,
    checks: AtomicU64,
    rejected: AtomicU64,
}

/// Rejects requests over their route's (and caller's) rate with `429 Too Many Requests` (gRPC:
/// `RESOURCE_EXHAUSTED`) and a `Retry-After` header, before they reach the application. The first rule whose prefix matches
/// decides; requests no rule matches pass. Checks never block (governor's GCRA); per-caller
/// buckets of callers gone quiet are pruned as the limiter goes.
///
/// ```
/// use mesh_hyper::server::{RateLimit, RateLimitLayer, RateLimitRule};
///
/// let layer = RateLimitLayer::new(vec![RateLimitRule {
///     path_prefix: "/reviews".into(),
///     per_caller: true,
///     rate: RateLimit { requests_per_second: 100, burst: Some(20) },
/// }]).unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// Builds the limiters; invalid rates are an error naming the rule.
    pub fn new(rules: Vec<RateLimitRule>) -> Result<Self, PolicyError> {
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let quota = r
                    .rate
                    .quota()
                    .map_err(|e| e.within(&format!("rules[{i}].rate")))?;
                if !r.path_prefix.starts_with('/') {
                    return Err(PolicyError::new(
                        format!("rules[{i}].pathPrefix"),
                        "must start with '/'",
                    ));
                }
                Ok(Rule {
                    prefix: r.path_prefix,
                    per_caller: r.per_caller,
                    limiter: RateLimiter::keyed(quota),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            shared: Arc::new(Shared {
                rules,
                checks: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            }),
        })
    }

    /// Requests rejected so far.
    pub fn rejected(&self) -> u64 {
        self.shared.rejected.load(Relaxed)
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;
    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimited<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Prune per-caller buckets every this many checks.
const PRUNE_EVERY: u64 = 4096;

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for RateLimited<S>
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
        let path = req.uri().path();
        let Some(rule) = self
            .shared
            .rules
            .iter()
            .find(|r| path.starts_with(&r.prefix))
        else {
            return Either::Left(self.inner.call(req));
        };
        let key = if rule.per_caller {
            match req.extensions().get::<PeerIdentity>() {
                Some(PeerIdentity(Some(id))) => id.as_str().to_owned(),
                _ => "anonymous".to_owned(),
            }
        } else {
            String::new()
        };
        if self.shared.checks.fetch_add(1, Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            for r in &self.shared.rules {
                r.limiter.retain_recent();
            }
        }
        match rule.limiter.check_key(&key) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(not_until) => {
                self.shared.rejected.fetch_add(1, Relaxed);
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                tracing::debug!(path = %req.uri().path(), rule = %rule.prefix, caller = %key,
                    retry_after = secs.max(1), "request rate-limited: 429");
                let grpc = crate::grpc::is_grpc(req.headers());
                let message = format!(
                    "rate limit of {} reached; retry after {}s",
                    rule.prefix,
                    secs.max(1)
                );
                let mut rsp = super::local_reply::local_reply(
                    grpc,
                    http::StatusCode::TOO_MANY_REQUESTS,
                    8,
                    &message,
                );
                rsp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from(secs.max(1)),
                );
                Either::Right(ready(Ok(rsp)))
            }
        }
    }
}
