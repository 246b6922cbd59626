//! `mesh check`: validate documents and summarize what they do, per host.

use std::{fmt::Write, path::PathBuf};

use mesh_core::{
    config::{ConfigSet, LoadOptions, Workload, load},
    route::{HeaderMatcher, HttpRoute, RequestMatch},
};

use crate::Outcome;

pub(crate) fn run(
    paths: &[PathBuf],
    workload: &Workload,
    options: &LoadOptions,
    json: bool,
) -> Outcome {
    match load(paths, workload, options) {
        Err(errors) => {
            let mut out = String::new();
            for e in &errors.0 {
                let _ = writeln!(out, "{e}");
            }
            let n = errors.errors().count();
            let _ = writeln!(
                out,
                "{n} error{} found: nothing would be applied",
                if n == 1 { "" } else { "s" }
            );
            Outcome::Invalid(out)
        }
        Ok(set) if json => Outcome::Ok(format!(
            "{}\n",
            serde_json::json!({
                "version": set.version(),
                "documents": set.documents(),
                "hosts": set.hosts(),
                "warnings": set.warnings().iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        )),
        Ok(set) => Outcome::Ok(summary(&set)),
    }
}

/// A match block in words.
pub(crate) fn describe_match(m: &RequestMatch) -> String {
    let mut parts = Vec::new();
    if let Some(u) = &m.uri {
        parts.push(format!(
            "uri {u}{}",
            if m.ignore_uri_case { " (any case)" } else { "" }
        ));
    }
    if let Some(x) = &m.method {
        parts.push(format!("method {x}"));
    }
    if let Some(x) = &m.authority {
        parts.push(format!("authority {x}"));
    }
    if let Some(x) = &m.scheme {
        parts.push(format!("scheme {x}"));
    }
    for (h, want) in &m.headers {
        parts.push(match want {
            HeaderMatcher::Present => format!("header {h} present"),
            HeaderMatcher::Value(v) => format!("header {h} {v}"),
        });
    }
    for (h, _) in &m.without_headers {
        parts.push(format!("without header {h}"));
    }
    for (k, v) in &m.query_params {
        parts.push(format!("query {k} {v}"));
    }
    if let Some(p) = m.port {
        parts.push(format!("port {p}"));
    }
    parts.join(" and ")
}

fn describe_route(r: &HttpRoute) -> String {
    let when = if r.matches.is_empty() {
        "every request".to_owned()
    } else {
        r.matches
            .iter()
            .map(describe_match)
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let to = r
        .backends
        .backends()
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{} {:.1} %", b.backend, r.backends.share(i) * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    let mut extra = Vec::new();
    if let Some(t) = r.overrides.timeout {
        extra.push(format!("timeout {}", mesh_core::duration::format(t)));
    }
    if let Some(rt) = &r.overrides.retries {
        extra.push(format!("{} retries", rt.attempts));
    }
    if r.fault.is_some() {
        extra.push("fault".into());
    }
    if !r.mirrors.is_empty() {
        extra.push(format!("{} mirror(s)", r.mirrors.len()));
    }
    if r.rewrite.is_some() {
        extra.push("rewrite".into());
    }
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" [{}]", extra.join(", "))
    };
    format!("{}: {when} -> {to}{extra}", r.label())
}

fn summary(set: &ConfigSet) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "valid: {} documents, configuration {} (namespace {})",
        set.documents(),
        set.version(),
        set.workload().naming.namespace
    );
    for host in set.hosts() {
        let _ = writeln!(out, "\n{host}");
        if let Some(vs) = set.virtual_service(&host) {
            let _ = writeln!(
                out,
                "  routes ({}):",
                vs.table.source.as_deref().unwrap_or("?")
            );
            for r in &vs.table.routes {
                let _ = writeln!(out, "    {}", describe_route(r));
            }
        }
        if let Some(dr) = set.destination_rule(&host) {
            let _ = writeln!(out, "  destination rule ({}):", dr.source);
            if let Some(lb) = &dr.policy.load_balancer {
                let _ = writeln!(out, "    load balancer {lb:?}");
            }
            if let Some(od) = &dr.policy.outlier_detection {
                let _ = writeln!(
                    out,
                    "    outlier detection: {} consecutive failures, eject {}",
                    od.consecutive_failures.unwrap_or(0),
                    mesh_core::duration::format(od.base_ejection_time)
                );
            }
            if let Some(cp) = &dr.policy.connection_pool {
                let _ = writeln!(
                    out,
                    "    connection pool: {:?} in flight, {} queued",
                    cp.limits.max_concurrent_requests, cp.limits.max_pending_requests
                );
            }
            if let Some(tls) = &dr.policy.tls {
                let _ = writeln!(out, "    tls {:?}", tls.mode);
            }
            for s in &dr.subsets {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let own = if s.policy == Default::default() {
                    ""
                } else {
                    " (own traffic policy)"
                };
                let _ = writeln!(
                    out,
                    "    subset {} selects {}{own}",
                    s.name,
                    labels.join(",")
                );
            }
        }
        for se in set
            .service_entries()
            .iter()
            .filter(|se| se.hosts.contains(&host))
        {
            let ports: Vec<String> = se
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.number, p.name))
                .collect();
            let _ = writeln!(
                out,
                "  service entry ({}): {:?}, ports {}, {} endpoint(s)",
                se.source,
                se.resolution,
                ports.join(","),
                se.endpoints.len()
            );
        }
    }
    let authz = set.authorizer();
    let _ = writeln!(
        out,
        "\nthis workload: inbound mTLS {:?}; authorization {}",
        set.peer_mode(0),
        if authz.is_empty() {
            "none (every request allowed)".to_owned()
        } else {
            authz.sources().join(", ")
        }
    );
    if !set.warnings().is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in set.warnings() {
            let _ = writeln!(out, "  {w}");
        }
    }
    out
}
