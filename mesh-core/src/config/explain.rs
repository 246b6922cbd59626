//! Why a request goes where it goes: the route that matched and why the earlier ones did not,
//! the destinations with their effective weights, each subset's endpoints, and every policy
//! that applies. `mesh explain` prints it; the admin endpoint answers it for live traffic.

use std::fmt;

use serde::Serialize;

use super::ConfigSet;
use crate::{
    DestinationPolicy, RoutePolicy, ServiceName,
    balance::LbPolicy,
    endpoint::{Endpoint, EndpointSet},
    route::{Abort, HttpRoute, RequestView, RouteTable, RouteVerdict},
};

/// The explanation of one request. See the [module docs](self).
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// `GET http://reviews:9080/reviews/1`.
    pub request: String,
    /// The host the request's authority resolved to.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The VirtualService that routes it (none: the default route to the host itself).
    pub virtual_service: Option<String>,
    /// The configuration version the explanation is of.
    pub config_version: String,
    /// Every route tried, in order, up to the one taken.
    pub routes: Vec<RouteVerdictView>,
    /// The route taken (none: no route matches; the request fails with "no route").
    pub route: Option<RouteView>,
}

/// One route's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct RouteVerdictView {
    /// Its position and label.
    pub route: String,
    /// Whether it took the request.
    pub matched: bool,
    /// Why (not).
    pub why: String,
}

/// The route taken, and everything it does.
#[derive(Clone, Debug, Serialize)]
pub struct RouteView {
    /// Its label.
    pub name: String,
    /// The overall timeout (none: no timeout).
    pub timeout: Option<String>,
    /// Retries: attempts, per-try timeout, conditions.
    pub retries: String,
    /// Injected faults.
    pub fault: Option<String>,
    /// Mirrors.
    pub mirrors: Vec<String>,
    /// Rewrite.
    pub rewrite: Option<String>,
    /// The destinations with their shares.
    pub destinations: Vec<DestinationView>,
}

/// One destination of the route.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationView {
    /// `reviews.default.svc.cluster.local:9080 (subset v2)`.
    pub backend: String,
    /// The weight as written.
    pub weight: u32,
    /// The share of the route's requests it receives, in percent.
    pub share_percent: f64,
    /// The subset's label selector (`version=v2`), if it is a subset.
    pub selector: Option<String>,
    /// Its endpoints (those matching the selector), when they are known.
    pub endpoints: Option<Vec<String>>,
    /// Load balancer.
    pub load_balancer: String,
    /// Outlier detection.
    pub outlier_detection: String,
    /// Concurrency and queue limits.
    pub limits: String,
    /// TLS.
    pub tls: String,
    /// The DestinationRule that set these, if any.
    pub destination_rule: Option<String>,
    /// The authorization the destination workload applies to inbound requests (the
    /// AuthorizationPolicies selecting workloads with these labels), when the caller is known.
    pub authorization: Option<String>,
}

/// What to explain and what is known around it.
pub struct ExplainInput<'a> {
    /// The request.
    pub request: &'a http::Request<()>,
    /// The caller's principal, for the authorization verdict
    /// (`cluster.local/ns/default/sa/productpage`).
    pub principal: Option<&'a crate::SpiffeId>,
    /// The endpoints of a service, when the caller knows them (discovery).
    pub endpoints: &'a dyn Fn(&ServiceName) -> Option<EndpointSet>,
}

/// Explains one request against `set` (see the [module docs](self)).
pub fn explain(set: &ConfigSet, input: &ExplainInput<'_>) -> Explanation {
    let req = input.request;
    let authority = req.uri().authority().map(|a| a.as_str()).unwrap_or("");
    let name = ServiceName::from_authority(authority, 80).ok();
    let (host, port) = match &name {
        Some(n) => (n.host().to_owned(), n.port()),
        None => (authority.to_owned(), 80),
    };
    let naming = &set.workload().naming;
    let host = naming
        .candidates(&host)
        .into_iter()
        .find(|c| set.knows_host(c))
        .unwrap_or(host);
    let default_table;
    let (table, vs): (&RouteTable, Option<String>) = match set.virtual_service(&host) {
        Some(vs) => (&vs.table, vs.table.source.clone()),
        None => {
            default_table = RouteTable::new(
                &host,
                vec![HttpRoute::to(
                    "default route (no VirtualService)",
                    crate::route::BackendRef::new(&host, Some(port), None),
                )],
            );
            (&default_table, None)
        }
    };
    let view = RequestView::of(req, port);
    let routes: Vec<RouteVerdictView> = table
        .explain(&view)
        .into_iter()
        .map(
            |RouteVerdict {
                 index,
                 route,
                 verdict,
             }| {
                let route = if route.starts_with("spec.") || route.starts_with("default") {
                    route
                } else {
                    format!("spec.http[{index}] ({route})")
                };
                match verdict {
                    Ok(why) => RouteVerdictView {
                        route,
                        matched: true,
                        why,
                    },
                    Err(why) => RouteVerdictView {
                        route,
                        matched: false,
                        why,
                    },
                }
            },
        )
        .collect();
    let route = table
        .find(&view)
        .map(|(_, r)| route_view(set, r, port, input));
    Explanation {
        request: format!("{} {}", req.method(), req.uri()),
        host,
        port,
        virtual_service: vs,
        config_version: set.version().to_owned(),
        routes,
        route,
    }
}

fn route_view(set: &ConfigSet, r: &HttpRoute, port: u16, input: &ExplainInput<'_>) -> RouteView {
    let policy = r.overrides.effective(&RoutePolicy::default());
    let retries = if policy.retries.attempts == 0 {
        "none".to_owned()
    } else {
        let on = &policy.retries.retry_on;
        let mut conditions = Vec::new();
        if on.connect_failure {
            conditions.push("connect-failure".to_owned());
        }
        if on.refused_stream {
            conditions.push("refused-stream".to_owned());
        }
        if on.per_try_timeout {
            conditions.push("per-try-timeout".to_owned());
        }
        if !on.statuses.is_empty() {
            conditions.push(format!("statuses {}", ranges(&on.statuses)));
        }
        if !on.grpc_statuses.is_empty() {
            conditions.push(format!("grpc {:?}", on.grpc_statuses));
        }
        format!(
            "{} retries{}{}, on {}; shared destination budget",
            policy.retries.attempts,
            if r.overrides.retries.is_none() {
                " (mesh default)"
            } else {
                ""
            },
            policy
                .retries
                .per_try_timeout
                .map(|t| format!(", {} per try", crate::duration::format(t)))
                .unwrap_or_default(),
            conditions.join(", ")
        )
    };
    let fault = r.fault.as_ref().map(|f| {
        let mut parts = Vec::new();
        if let Some((d, p)) = f.delay {
            parts.push(format!(
                "delay {} for {p} of requests",
                crate::duration::format(d)
            ));
        }
        if let Some((a, p)) = f.abort {
            let what = match a {
                Abort::Http(s) => format!("HTTP {s}"),
                Abort::Grpc(c) => format!("gRPC status {c}"),
            };
            parts.push(format!("abort with {what} for {p} of requests"));
        }
        parts.join("; ")
    });
    let mirrors = r
        .mirrors
        .iter()
        .map(|m| format!("{} ({} of requests)", m.backend, m.percentage))
        .collect();
    let rewrite = r.rewrite.as_ref().map(|rw| format!("{rw:?}"));
    let destinations = r
        .backends
        .backends()
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let b = &w.backend;
            let bport = b.port.unwrap_or(port);
            let dr = set.destination_rule(&b.host);
            let policy = match dr {
                Some(dr) => dr.effective(&DestinationPolicy::default(), b.subset.as_deref(), bport),
                None => DestinationPolicy::default(),
            };
            let selector = b
                .subset
                .as_ref()
                .and_then(|s| dr?.subset(s))
                .map(|s| s.labels.clone());
            let endpoints = ServiceName::parse(&format!("{}:{bport}", b.host))
                .ok()
                .and_then(|n| (input.endpoints)(&n))
                .map(|set| {
                    set.iter()
                        .filter(|e| selector.as_ref().is_none_or(|sel| selects(sel, e)))
                        .map(|e| format!("{} {:?}", e.addr, e.labels))
                        .collect()
                });
            let authorization = input.principal.map(|p| {
                let mut w = set.workload().clone();
                w.naming.namespace = b
                    .host
                    .split('.')
                    .nth(1)
                    .unwrap_or(&w.naming.namespace)
                    .to_owned();
                w.labels = selector.iter().flat_map(|s| s.iter().cloned()).collect();
                if let Some(app) = b.host.split('.').next() {
                    w.labels
                        .entry("app".into())
                        .or_insert_with(|| app.to_owned());
                }
                let a = super::convert::security::authorizer_for(set.authorization_policies(), &w);
                let d = a.evaluate(Some(p), input.request.method(), input.request.uri().path());
                format!(
                    "{d} (policies: {})",
                    if a.sources().is_empty() {
                        "none".into()
                    } else {
                        a.sources().join(", ")
                    }
                )
            });
            DestinationView {
                backend: b.to_string(),
                weight: w.weight,
                share_percent: r.backends.share(i) * 100.0,
                selector: selector.map(|s| {
                    s.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }),
                endpoints,
                load_balancer: lb(&policy.balance.policy),
                outlier_detection: match &policy.balance.outlier_detection {
                    None => "off".into(),
                    Some(od) => format!(
                        "eject after {} consecutive failures for {} (max {} % ejected)",
                        od.consecutive_failures
                            .map_or("∞".into(), |n| n.to_string()),
                        crate::duration::format(od.base_ejection_time),
                        od.max_ejection_percent
                    ),
                },
                limits: format!(
                    "{} in flight, {} queued",
                    policy
                        .limits
                        .max_concurrent_requests
                        .map_or("unlimited".into(), |n| n.to_string()),
                    policy.limits.max_pending_requests
                ),
                tls: format!("{:?}", policy.tls.mode),
                destination_rule: dr.map(|d| d.source.clone()),
                authorization,
            }
        })
        .collect();
    RouteView {
        name: r.label().to_owned(),
        timeout: policy.timeout.map(crate::duration::format),
        retries,
        fault,
        mirrors,
        rewrite,
        destinations,
    }
}

fn selects(selector: &[(String, String)], e: &Endpoint) -> bool {
    e.labels
        .matches(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn lb(p: &LbPolicy) -> String {
    match p {
        LbPolicy::P2cPeakEwma { .. } => "LEAST_REQUEST (P2C Peak-EWMA)".into(),
        LbPolicy::RoundRobin => "ROUND_ROBIN".into(),
        LbPolicy::Weighted => "weighted random".into(),
        LbPolicy::Random => "RANDOM".into(),
        LbPolicy::RingHash { header, .. } => format!("consistent hash on header {header:?}"),
        LbPolicy::ConsistentHash { hash_on, .. } => format!("consistent hash on {hash_on:?}"),
    }
}

/// `[500, 501, ..., 599]` → `500-599`.
fn ranges(codes: &[u16]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < codes.len() {
        let start = codes[i];
        let mut end = start;
        while i + 1 < codes.len() && codes[i + 1] == end + 1 {
            i += 1;
            end = codes[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "request: {}", self.request)?;
        writeln!(
            f,
            "host:    {}:{} (configuration {})",
            self.host, self.port, self.config_version
        )?;
        match &self.virtual_service {
            Some(vs) => writeln!(f, "routed by {vs}")?,
            None => writeln!(
                f,
                "no VirtualService for this host: one default route to it"
            )?,
        }
        writeln!(f, "\nroutes, in order:")?;
        for r in &self.routes {
            let mark = if r.matched { "MATCH" } else { "no   " };
            writeln!(f, "  {mark} {}: {}", r.route, r.why)?;
        }
        let Some(r) = &self.route else {
            return writeln!(
                f,
                "\nno route matches: the request fails with \"no route\" (HTTP 404 NR; gRPC UNIMPLEMENTED)"
            );
        };
        writeln!(f, "\nroute {}:", r.name)?;
        writeln!(f, "  timeout:  {}", r.timeout.as_deref().unwrap_or("none"))?;
        writeln!(f, "  retries:  {}", r.retries)?;
        if let Some(fault) = &r.fault {
            writeln!(f, "  fault:    {fault}")?;
        }
        for m in &r.mirrors {
            writeln!(f, "  mirror:   {m}")?;
        }
        if let Some(rw) = &r.rewrite {
            writeln!(f, "  rewrite:  {rw}")?;
        }
        writeln!(f, "  destinations:")?;
        for d in &r.destinations {
            if r.destinations.len() > 1 {
                writeln!(
                    f,
                    "    {:>6.2} %  {} (weight {})",
                    d.share_percent, d.backend, d.weight
                )?;
            } else {
                writeln!(f, "    {:>6.2} %  {}", d.share_percent, d.backend)?;
            }
            if let Some(sel) = &d.selector {
                writeln!(f, "              subset selects {sel}")?;
            }
            if let Some(eps) = &d.endpoints {
                if eps.is_empty() {
                    writeln!(f, "              endpoints: none")?;
                }
                for e in eps {
                    writeln!(f, "              endpoint {e}")?;
                }
            }
            writeln!(f, "              load balancer: {}", d.load_balancer)?;
            writeln!(
                f,
                "              outlier detection: {}",
                d.outlier_detection
            )?;
            writeln!(f, "              limits: {}", d.limits)?;
            writeln!(f, "              tls: {}", d.tls)?;
            if let Some(dr) = &d.destination_rule {
                writeln!(f, "              from {dr}")?;
            }
            if let Some(a) = &d.authorization {
                writeln!(f, "              authorization at the destination: {a}")?;
            }
        }
        Ok(())
    }
}
