//! DestinationRule → [`DestinationRule`]: subsets and traffic policy blocks.

use std::sync::Arc;

use super::{
    Ctx,
    common::{check_export_to, is_dns_label, nth, port, sub},
    traffic_policy::{client_tls, connection_pool, load_balancer, outlier, retry_budget},
};
use crate::{
    balance::{LbPolicy, Selector},
    config::wire,
    outlier::OutlierDetection,
    policy::{DestinationPolicy, Protocol},
    retry::BudgetPolicy,
    tls::ClientTlsPolicy,
};

/// A validated DestinationRule.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationRule {
    /// The host (expanded).
    pub host: String,
    /// Its namespace.
    pub namespace: String,
    /// `exportTo`.
    pub export_to: Vec<String>,
    /// Where it was written (`DestinationRule default/reviews`).
    pub source: String,
    /// The host-level `trafficPolicy`.
    pub policy: TrafficPolicy,
    /// The subsets, in the order written.
    pub subsets: Vec<SubsetPolicy>,
}

impl DestinationRule {
    /// A subset by name.
    pub fn subset(&self, name: &str) -> Option<&SubsetPolicy> {
        self.subsets.iter().find(|s| &*s.name == name)
    }

    /// The destination policy for `subset` (none: the whole host) on `port`: `base`, with
    /// this rule's blocks, then the port's, then the subset's (whole blocks replace whole
    /// blocks, as Istio merges them).
    pub fn effective(
        &self,
        base: &DestinationPolicy,
        subset: Option<&str>,
        port: u16,
    ) -> DestinationPolicy {
        let mut p = base.clone();
        self.policy.apply(&mut p, port);
        if let Some(s) = subset.and_then(|s| self.subset(s)) {
            s.policy.apply(&mut p, port);
        }
        p
    }
}

/// One subset: a name, a label selector and its own policy blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct SubsetPolicy {
    /// The name (a DNS label).
    pub name: Arc<str>,
    /// The endpoints it selects.
    pub labels: Selector,
    /// Its `trafficPolicy`.
    pub policy: TrafficPolicy,
}

/// Istio's `trafficPolicy`, by block: each block that is set replaces the same block of the
/// policy it applies to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    /// `loadBalancer`.
    pub load_balancer: Option<LbPolicy>,
    /// `connectionPool`.
    pub connection_pool: Option<ConnectionPool>,
    /// `outlierDetection`.
    pub outlier_detection: Option<OutlierDetection>,
    /// `tls`.
    pub tls: Option<ClientTlsPolicy>,
    /// `retryBudget`.
    pub retry_budget: Option<BudgetPolicy>,
    /// `portLevelSettings`, by port.
    pub ports: Vec<(u16, TrafficPolicy)>,
}

impl TrafficPolicy {
    /// Applies the set blocks (then those of `port`) to `p`.
    pub fn apply(&self, p: &mut DestinationPolicy, port: u16) {
        if let Some(lb) = &self.load_balancer {
            p.balance.policy = lb.clone();
        }
        if let Some(cp) = &self.connection_pool {
            p.limits = cp.limits.clone();
            p.retry_budget.max_concurrent = cp
                .max_retries
                .unwrap_or(crate::retry::DEFAULT_MAX_CONCURRENT_RETRIES);
            p.connect_timeout = cp.connect_timeout;
            p.idle_timeout = cp.idle_timeout;
            if cp.h2_upgrade {
                p.protocol = Protocol::Http2;
            }
        }
        if let Some(od) = &self.outlier_detection {
            p.balance.outlier_detection = Some(od.clone());
        }
        if let Some(tls) = &self.tls {
            p.tls = tls.clone();
        }
        if let Some(b) = &self.retry_budget {
            let max = p.retry_budget.max_concurrent;
            p.retry_budget = BudgetPolicy {
                max_concurrent: max,
                ..b.clone()
            };
        }
        for (n, pp) in &self.ports {
            if *n == port {
                pp.apply(p, port);
            }
        }
    }
}

pub use super::traffic_policy::ConnectionPool;

pub(crate) fn convert(
    cx: &mut Ctx<'_>,
    spec: &wire::DestinationRuleSpec,
) -> Option<DestinationRule> {
    let before = cx.p.error_count();
    let host = match spec.host.as_deref() {
        None | Some("") => {
            cx.p.error("spec.host", "host is required");
            String::new()
        }
        Some("*") => {
            cx.p.error(
                "spec.host",
                "\"*\" is not a host mesh can apply a DestinationRule to",
            );
            String::new()
        }
        Some(h) => cx.naming.expand(h, cx.ns),
    };
    check_export_to(&mut cx.p, "spec.exportTo", &spec.export_to);
    if spec.workload_selector.is_some() {
        cx.p.unimplemented("spec.workloadSelector", "workloadSelector");
    }
    let policy = traffic_policy(cx, "spec.trafficPolicy", spec.traffic_policy.as_ref(), true);
    let mut subsets: Vec<SubsetPolicy> = Vec::new();
    for (i, s) in spec.subsets.iter().enumerate() {
        let at = nth("spec", "subsets", i);
        let name = match s.name.as_deref() {
            Some(n) if is_dns_label(n) => n,
            Some(n) => {
                cx.p.error(
                    sub(&at, "name"),
                    format!("{n:?} is not a valid subset name (a DNS label)"),
                );
                continue;
            }
            None => {
                cx.p.error(sub(&at, "name"), "a subset needs a name");
                continue;
            }
        };
        if subsets.iter().any(|x| &*x.name == name) {
            cx.p.error(sub(&at, "name"), format!("duplicate subset name {name:?}"));
            continue;
        }
        let labels: Selector = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
            .into();
        let policy = traffic_policy(
            cx,
            &sub(&at, "trafficPolicy"),
            s.traffic_policy.as_ref(),
            true,
        );
        subsets.push(SubsetPolicy {
            name: name.into(),
            labels,
            policy,
        });
    }
    (cx.p.error_count() == before).then(|| DestinationRule {
        host,
        namespace: cx.ns.to_owned(),
        export_to: spec.export_to.clone(),
        source: cx.document.to_owned(),
        policy,
        subsets,
    })
}

fn traffic_policy(
    cx: &mut Ctx<'_>,
    at: &str,
    tp: Option<&wire::TrafficPolicy>,
    ports_allowed: bool,
) -> TrafficPolicy {
    let Some(tp) = tp else {
        return TrafficPolicy::default();
    };
    if tp.tunnel.is_some() {
        cx.p.unimplemented(sub(at, "tunnel"), "tunnel");
    }
    if tp.proxy_protocol.is_some() {
        cx.p.unimplemented(sub(at, "proxyProtocol"), "proxyProtocol");
    }
    let mut out = blocks(
        cx,
        at,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    if let Some(b) = &tp.retry_budget {
        out.retry_budget = retry_budget(cx, &sub(at, "retryBudget"), b);
    }
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let f = nth(at, "portLevelSettings", i);
        if !ports_allowed {
            cx.p.error(&f, "not allowed here");
            continue;
        }
        let Some(n) = pl.port.as_ref().and_then(|p| p.number) else {
            cx.p.error(
                sub(&f, "port.number"),
                "a port-level setting needs a port number",
            );
            continue;
        };
        let Some(n) = port(&mut cx.p, &sub(&f, "port.number"), n) else {
            continue;
        };
        if out.ports.iter().any(|(p, _)| *p == n) {
            cx.p.error(sub(&f, "port.number"), format!("port {n} is set twice"));
            continue;
        }
        let b = blocks(
            cx,
            &f,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
        out.ports.push((n, b));
    }
    out
}

fn blocks(
    cx: &mut Ctx<'_>,
    at: &str,
    lb: Option<&wire::LoadBalancerSettings>,
    cp: Option<&wire::ConnectionPoolSettings>,
    od: Option<&wire::OutlierDetection>,
    tls: Option<&wire::ClientTlsSettings>,
) -> TrafficPolicy {
    TrafficPolicy {
        load_balancer: lb.and_then(|lb| load_balancer(cx, &sub(at, "loadBalancer"), lb)),
        connection_pool: cp.and_then(|cp| connection_pool(cx, &sub(at, "connectionPool"), cp)),
        outlier_detection: od.and_then(|od| outlier(cx, &sub(at, "outlierDetection"), od)),
        tls: tls.and_then(|t| client_tls(cx, &sub(at, "tls"), t)),
        retry_budget: None,
        ports: Vec::new(),
    }
}
