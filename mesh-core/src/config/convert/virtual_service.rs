//! VirtualService → [`RouteTable`].

use http::HeaderName;

use super::{
    Ctx,
    common::{check_export_to, destination, headers, nth, opt_duration, port, string_match, sub},
    route_policy::{fault, mirrors, retry, rewrite},
};
use crate::{
    config::wire,
    retry::RetryPolicy,
    route::{
        Distribution, HeaderMatcher, HttpRoute, RequestMatch, RouteOverrides, RouteTable,
        WeightedBackend,
    },
};

/// A validated VirtualService: the hosts it routes and their routes.
#[derive(Clone, Debug, PartialEq)]
pub struct VirtualService {
    /// The hosts (expanded), in the order written.
    pub hosts: Vec<String>,
    /// Its namespace.
    pub namespace: String,
    /// `exportTo`.
    pub export_to: Vec<String>,
    /// The routes (the table's host is the first host).
    pub table: RouteTable,
}

/// Converts one VirtualService; `None` when it does not apply to this workload (bound only
/// to gateways: skipped with a warning) or is invalid (errors recorded).
pub(crate) fn convert(cx: &mut Ctx<'_>, spec: &wire::VirtualServiceSpec) -> Option<VirtualService> {
    let before = cx.p.error_count();
    if !spec.gateways.is_empty() && !spec.gateways.iter().any(|g| g == "mesh") {
        cx.p.warn(
            "spec.gateways",
            format!(
                "bound to gateways {:?} only, not to \"mesh\": it does not apply in-process and is skipped",
                spec.gateways
            ),
        );
        return None;
    }
    if spec.hosts.is_empty() {
        cx.p.error("spec.hosts", "at least one host is required");
    }
    let mut hosts: Vec<String> = Vec::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        if h == "*" {
            cx.p.error(
                nth("spec", "hosts", i),
                "\"*\" is not allowed for the mesh (sidecars): name the hosts",
            );
            continue;
        }
        let proper_wildcard = h.starts_with("*.") && !h[1..].contains('*');
        if h.contains('*') && !proper_wildcard {
            cx.p.error(
                nth("spec", "hosts", i),
                "a wildcard must be the whole first label (*.example.com)",
            );
            continue;
        }
        let host = cx.naming.expand(h, cx.ns);
        if hosts.contains(&host) {
            cx.p.error(nth("spec", "hosts", i), format!("duplicate host {host}"));
            continue;
        }
        hosts.push(host);
    }
    check_export_to(&mut cx.p, "spec.exportTo", &spec.export_to);
    if !spec.tcp.is_empty() {
        cx.p.unimplemented("spec.tcp", "TCP routing");
    }
    if !spec.tls.is_empty() {
        cx.p.unimplemented("spec.tls", "TLS (SNI) routing");
    }
    if spec.http.is_empty() && spec.tcp.is_empty() && spec.tls.is_empty() {
        cx.p.error(
            "spec.http",
            "a VirtualService needs at least one http route",
        );
    }
    let mut routes = Vec::new();
    let mut catch_all: Option<String> = None;
    for (i, r) in spec.http.iter().enumerate() {
        let at = nth("spec", "http", i);
        if let Some(prev) = &catch_all {
            cx.p.warn(
                &at,
                format!("unreachable: {prev} before it matches every request (Istio IST0130)"),
            );
        }
        if let Some(route) = http_route(cx, &at, r) {
            if route.matches.is_empty() && catch_all.is_none() {
                catch_all = Some(route.id.clone());
            }
            routes.push(route);
        }
    }
    if cx.p.error_count() > before {
        return None;
    }
    Some(VirtualService {
        table: RouteTable {
            host: hosts.first().cloned().unwrap_or_default(),
            source: Some(cx.document.to_owned()),
            routes,
        },
        hosts,
        namespace: cx.ns.to_owned(),
        export_to: spec.export_to.clone(),
    })
}

fn http_route(cx: &mut Ctx<'_>, at: &str, r: &wire::HttpRoute) -> Option<HttpRoute> {
    let mut matches = Vec::new();
    let mut dropped = 0;
    for (k, m) in r.r#match.iter().enumerate() {
        match request_match(cx, &nth(at, "match", k), m) {
            Some(Some(m)) => matches.push(m),
            Some(None) => dropped += 1,
            None => {}
        }
    }
    if dropped > 0 && matches.is_empty() && dropped == r.r#match.len() {
        cx.p.warn(
            sub(at, "match"),
            "no match block applies to this workload (gateways / sourceLabels / sourceNamespace): the route never matches",
        );
        return None;
    }
    for (field, set) in [
        ("redirect", r.redirect.is_some()),
        ("directResponse", r.direct_response.is_some()),
        ("delegate", r.delegate.is_some()),
        ("corsPolicy", r.cors_policy.is_some()),
    ] {
        if set {
            cx.p.unimplemented(format!("{at}.{field}"), field);
        }
    }
    if r.route.is_empty() {
        if r.redirect.is_none() && r.direct_response.is_none() && r.delegate.is_none() {
            cx.p.error(sub(at, "route"), "a route needs at least one destination");
        }
        return None;
    }
    let mut backends = Vec::new();
    for (k, d) in r.route.iter().enumerate() {
        let f = nth(at, "route", k);
        let Some(backend) = destination(cx, &sub(&f, "destination"), &d.destination) else {
            continue;
        };
        let weight = match d.weight {
            None => 0,
            Some(w) if w < 0 => {
                cx.p.error(
                    sub(&f, "weight"),
                    format!("{w}: weights must not be negative"),
                );
                continue;
            }
            Some(w) => w as u32,
        };
        backends.push(WeightedBackend {
            backend,
            weight,
            headers: headers(&mut cx.p, &sub(&f, "headers"), &d.headers),
        });
    }
    if backends.len() != r.route.len() {
        return None;
    }
    let Some(backends) = Distribution::weighted(backends) else {
        cx.p.error(
            sub(at, "route"),
            "total destination weight is 0: with several destinations, at least one needs a weight",
        );
        return None;
    };
    let timeout = opt_duration(&mut cx.p, &sub(at, "timeout"), &r.timeout);
    let retries = r
        .retries
        .as_ref()
        .and_then(|rt| retry(cx, &sub(at, "retries"), rt));
    let fault = r
        .fault
        .as_ref()
        .and_then(|f| fault(cx, &sub(at, "fault"), f));
    let mirrors = mirrors(cx, at, r);
    let rewrite = r
        .rewrite
        .as_ref()
        .and_then(|rw| rewrite(cx, &sub(at, "rewrite"), rw));
    let headers = headers(&mut cx.p, &sub(at, "headers"), &r.headers);
    Some(HttpRoute {
        id: at.to_owned(),
        name: r.name.clone(),
        matches,
        backends,
        overrides: RouteOverrides {
            timeout,
            retries: retries.or_else(|| {
                // `retries` with attempts 0 disables them; absent keeps the destination's.
                r.retries.as_ref().map(|_| RetryPolicy::disabled())
            }),
        },
        fault,
        mirrors,
        headers,
        rewrite,
    })
}

/// `Some(Some(m))`: a match block; `Some(None)`: one that does not apply to this workload;
/// `None`: invalid (errors recorded).
fn request_match(
    cx: &mut Ctx<'_>,
    at: &str,
    m: &wire::HttpMatchRequest,
) -> Option<Option<RequestMatch>> {
    let before = cx.p.error_count();
    let mut out = RequestMatch {
        name: m.name.clone(),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
        ..RequestMatch::default()
    };
    let one = |cx: &mut Ctx<'_>, field: &str, sm: &Option<wire::StringMatch>, empty_ok: bool| {
        let sm = sm.as_ref()?;
        let r = string_match(&mut cx.p, &format!("{at}.{field}"), sm, empty_ok);
        if r.is_none() && sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none() {
            cx.p.error(
                format!("{at}.{field}"),
                "needs one of exact, prefix or regex",
            );
        }
        r
    };
    out.uri = one(cx, "uri", &m.uri, true);
    out.scheme = one(cx, "scheme", &m.scheme, false);
    out.method = one(cx, "method", &m.method, false);
    out.authority = one(cx, "authority", &m.authority, false);
    for (what, src, dst) in [
        ("headers", &m.headers, &mut out.headers),
        (
            "withoutHeaders",
            &m.without_headers,
            &mut out.without_headers,
        ),
    ] {
        for (name, sm) in src {
            let f = format!("{at}.{what}[{name:?}]");
            let lower = name.to_ascii_lowercase();
            if matches!(lower.as_str(), "uri" | "scheme" | "method" | "authority") {
                cx.p.warn(
                    &f,
                    format!("Istio ignores {name:?} under {what}: use the match's own field"),
                );
                continue;
            }
            let Ok(header) = HeaderName::from_bytes(lower.as_bytes()) else {
                cx.p.error(&f, format!("{name:?} is not a valid header name"));
                continue;
            };
            let matcher = match string_match(&mut cx.p, &f, sm, false) {
                Some(v) => HeaderMatcher::Value(v),
                None if sm.exact.is_none() && sm.prefix.is_none() && sm.regex.is_none() => {
                    HeaderMatcher::Present
                }
                None => continue,
            };
            dst.push((header, matcher));
        }
    }
    for (key, sm) in &m.query_params {
        let f = format!("{at}.queryParams[{key:?}]");
        if sm.prefix.is_some() {
            cx.p.error(
                &f,
                "prefix is not supported for query parameters (Istio: exact or regex)",
            );
            continue;
        }
        match string_match(&mut cx.p, &f, sm, false) {
            Some(v) => out.query_params.push((key.clone(), v)),
            None if sm.exact.is_none() && sm.regex.is_none() => {
                cx.p.error(&f, "needs exact or regex (exact: \"\" matches ?key)");
            }
            None => {}
        }
    }
    if let Some(n) = m.port {
        out.port = port(&mut cx.p, &sub(at, "port"), n);
    }
    if m.stat_prefix.is_some() {
        cx.p.unimplemented(sub(at, "statPrefix"), "statPrefix");
    }
    if cx.p.error_count() > before {
        return None;
    }
    // Selectors, not runtime conditions: decided once, for this workload.
    if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
        return Some(None);
    }
    if !m.source_labels.is_empty()
        && !m
            .source_labels
            .iter()
            .all(|(k, v)| cx.workload.labels.get(k) == Some(v))
    {
        return Some(None);
    }
    if m.source_namespace
        .as_ref()
        .is_some_and(|ns| *ns != cx.naming.namespace)
    {
        return Some(None);
    }
    Some(Some(out))
}
