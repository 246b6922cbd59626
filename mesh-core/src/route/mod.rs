//! Routing: which route a request to a destination takes, and where that route sends it.
//!
//! A [`RouteTable`] is the validated form of one host's VirtualService `http` section (or the
//! single catch-all route of a host no VirtualService names). Its [`HttpRoute`]s are tried in
//! order and the **first whose conditions match wins** (Istio's rule); a route without `match`
//! blocks matches everything. Each route carries:
//!
//! - its **backends** with relative weights ([`Distribution`]): a backend receives
//!   `weight / sum of weights` of the route's requests (current Istio: one backend receives
//!   everything whatever its weight; an omitted weight is 0);
//! - its timeout and retries ([`RouteOverrides`] over the destination's [`RoutePolicy`]), [`FaultPolicy`], [`MirrorPolicy`]s, [`Headers`]
//!   operations and [`Rewrite`].
//!
//! A request no route matches fails with a typed "no route" error: Envoy answers `404 NR` (HTTP)
//! and gRPC clients then see `UNIMPLEMENTED`; the protocol crates map the error the same way.
//!
//! This module is protocol-agnostic and holds no connections: backends are named
//! ([`BackendRef`]: host, port, subset) and the protocol client keeps the balancer of each.
//!
//! ```
//! use mesh_core::route::{BackendRef, HttpRoute, RequestMatch, RequestView, RouteTable, StringMatcher};
//!
//! let v1 = BackendRef::new("reviews.default.svc.cluster.local", Some(9080), Some("v1"));
//! let v2 = BackendRef::new("reviews.default.svc.cluster.local", Some(9080), Some("v2"));
//! let jason = RequestMatch {
//!     headers: vec![("end-user".parse().unwrap(),
//!         mesh_core::route::HeaderMatcher::Value(StringMatcher::Exact("jason".into())))],
//!     ..RequestMatch::default()
//! };
//! let table = RouteTable::new("reviews.default.svc.cluster.local", vec![
//!     HttpRoute { matches: vec![jason], ..HttpRoute::to("spec.http[0]", v2.clone()) },
//!     HttpRoute::to("spec.http[1]", v1.clone()),
//! ]);
//! let req = http::Request::get("http://reviews:9080/").header("end-user", "jason").body(()).unwrap();
//! let (_, route) = table.find(&RequestView::of(&req, 9080)).unwrap();
//! assert_eq!(route.backends.backends()[0].backend, v2);
//! ```

mod distribute;
mod matcher;
mod policy;

use std::{fmt, sync::Arc};

pub use self::{
    distribute::{Distribution, WeightedBackend},
    matcher::{HeaderMatcher, MAX_REGEX_LEN, Re2, RequestMatch, RequestView, StringMatcher},
    policy::{
        Abort, FaultPolicy, HeaderOps, Headers, MirrorPolicy, Percentage, Rewrite, UriRewrite,
    },
};
use crate::policy::RoutePolicy;

/// Where a route sends requests: a host (a service's FQDN, or a ServiceEntry host), its port
/// (`None`: the port the request was sent to) and a subset of its endpoints (`None`: all).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendRef {
    /// The host, lowercase.
    pub host: Arc<str>,
    /// The port, when the route names one.
    pub port: Option<u16>,
    /// The DestinationRule subset, when the route names one.
    pub subset: Option<Arc<str>>,
}

impl BackendRef {
    /// A backend.
    pub fn new(host: &str, port: Option<u16>, subset: Option<&str>) -> Self {
        Self {
            host: host.to_ascii_lowercase().into(),
            port,
            subset: subset.map(Into::into),
        }
    }
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if let Some(s) = &self.subset {
            write!(f, " (subset {s})")?;
        }
        Ok(())
    }
}

/// The timeout and retries a route sets; what it leaves unset is the destination's default
/// (the [`RoutePolicy`] of its `ServiceConfig`, mesh's defaults unless configured in code).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteOverrides {
    /// The route's `timeout`.
    pub timeout: Option<std::time::Duration>,
    /// The route's `retries`.
    pub retries: Option<crate::retry::RetryPolicy>,
}

impl RouteOverrides {
    /// The policy in force: these overrides over `base`.
    pub fn effective(&self, base: &RoutePolicy) -> RoutePolicy {
        RoutePolicy {
            timeout: self.timeout.or(base.timeout),
            retries: self.retries.clone().unwrap_or_else(|| base.retries.clone()),
        }
    }
}

/// One route: conditions, backends and what is done to its requests.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRoute {
    /// Where it was written (`spec.http[1]`), for errors, explanations and metrics.
    pub id: String,
    /// Its `name`, if it has one.
    pub name: Option<String>,
    /// Any one of these must match; none at all: every request matches.
    pub matches: Vec<RequestMatch>,
    /// The weighted backends.
    pub backends: Distribution,
    /// The timeout and retries the route sets (what it leaves unset comes from the
    /// destination's default route policy).
    pub overrides: RouteOverrides,
    /// Faults injected into its requests.
    pub fault: Option<FaultPolicy>,
    /// Copies of its requests sent elsewhere.
    pub mirrors: Vec<MirrorPolicy>,
    /// Header operations (the backend's own come after these).
    pub headers: Headers,
    /// Path and authority rewrite.
    pub rewrite: Option<Rewrite>,
}

impl HttpRoute {
    /// A catch-all route to one backend with the default policy.
    pub fn to(id: &str, backend: BackendRef) -> Self {
        Self {
            id: id.to_owned(),
            name: None,
            matches: Vec::new(),
            backends: Distribution::single(backend),
            overrides: RouteOverrides::default(),
            fault: None,
            mirrors: Vec::new(),
            headers: Headers::default(),
            rewrite: None,
        }
    }

    /// Which `match` block the request satisfies (`Some(None)`: the route has none, so it
    /// matches everything), or `None`.
    pub fn matching(&self, req: &RequestView<'_>) -> Option<Option<&RequestMatch>> {
        if self.matches.is_empty() {
            return Some(None);
        }
        self.matches.iter().find(|m| m.matches(req)).map(Some)
    }

    /// The route's label: its name, else where it was written.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// The routes of one host, in order. See the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteTable {
    /// The host (a service's FQDN, a ServiceEntry host, or a wildcard `*.example.com`).
    pub host: String,
    /// The document that wrote it (`VirtualService default/reviews`), none for the default
    /// route of a host no VirtualService names.
    pub source: Option<String>,
    /// The routes, tried in order.
    pub routes: Vec<HttpRoute>,
}

impl RouteTable {
    /// A table of `routes` for `host`, written in code.
    pub fn new(host: &str, routes: Vec<HttpRoute>) -> Self {
        Self {
            host: host.to_owned(),
            source: None,
            routes,
        }
    }

    /// The route a request takes (with its index), or `None`: no route matches.
    pub fn find(&self, req: &RequestView<'_>) -> Option<(usize, &HttpRoute)> {
        let found = self
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matching(req).is_some());
        match found {
            Some((i, r)) => {
                tracing::trace!(host = %self.host, route = r.label(), "route matched");
                Some((i, r))
            }
            None => {
                tracing::debug!(host = %self.host, path = req.path, "no route matches");
                None
            }
        }
    }

    /// For every route up to the one taken: why it did not match, or that it did.
    pub fn explain(&self, req: &RequestView<'_>) -> Vec<RouteVerdict> {
        let mut out = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let verdict = if route.matches.is_empty() {
                Ok("no match conditions: every request".to_owned())
            } else {
                let mut reasons = Vec::new();
                let mut hit = None;
                for (k, m) in route.matches.iter().enumerate() {
                    let label = m.name.clone().unwrap_or_else(|| format!("match[{k}]"));
                    match m.mismatch(req) {
                        None => {
                            hit = Some(label);
                            break;
                        }
                        Some(why) => reasons.push(format!("{label}: {why}")),
                    }
                }
                match hit {
                    Some(label) => Ok(format!("{label} matches")),
                    None => Err(reasons.join("; ")),
                }
            };
            let taken = verdict.is_ok();
            out.push(RouteVerdict {
                index: i,
                route: route.label().to_owned(),
                verdict,
            });
            if taken {
                break;
            }
        }
        out
    }
}

/// Why one route did or did not take a request (see [`RouteTable::explain`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteVerdict {
    /// The route's position.
    pub index: usize,
    /// Its label.
    pub route: String,
    /// `Ok(why it matched)` or `Err(why not)`.
    pub verdict: Result<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let v1 = BackendRef::new("reviews", None, Some("v1"));
        let v2 = BackendRef::new("reviews", None, Some("v2"));
        RouteTable::new(
            "reviews",
            vec![
                HttpRoute {
                    matches: vec![RequestMatch {
                        uri: Some(StringMatcher::Prefix("/admin".into())),
                        ..RequestMatch::default()
                    }],
                    ..HttpRoute::to("spec.http[0]", v2.clone())
                },
                HttpRoute {
                    name: Some("jason".into()),
                    matches: vec![RequestMatch {
                        headers: vec![(
                            "end-user".parse().unwrap(),
                            HeaderMatcher::Value(StringMatcher::Exact("jason".into())),
                        )],
                        ..RequestMatch::default()
                    }],
                    ..HttpRoute::to("spec.http[1]", v2)
                },
                HttpRoute::to("spec.http[2]", v1),
            ],
        )
    }

    #[test]
    fn first_matching_route_wins_and_explain_says_why() {
        let t = table();
        let req = http::Request::get("http://reviews/x")
            .header("end-user", "jason")
            .body(())
            .unwrap();
        let view = RequestView::of(&req, 80);
        assert_eq!(t.find(&view).unwrap().0, 1);
        let why = t.explain(&view);
        assert_eq!(why.len(), 2);
        assert!(
            why[0].verdict.as_ref().unwrap_err().contains("uri"),
            "{why:?}"
        );
        assert_eq!(why[1].route, "jason");
        assert!(why[1].verdict.is_ok());

        let other = http::Request::get("http://reviews/x").body(()).unwrap();
        assert_eq!(t.find(&RequestView::of(&other, 80)).unwrap().0, 2);
        let none = RouteTable::new("reviews", t.routes[..2].to_vec());
        assert!(none.find(&RequestView::of(&other, 80)).is_none());
    }
}
