//! The blocks of a DestinationRule's `trafficPolicy`: load balancer, connection pool, outlier
//! detection, TLS and retry budget.

use std::time::Duration;

use super::{
    Ctx,
    common::{duration, opt_duration, sub},
};
use crate::{
    balance::{HashOn, HeaderKey, LbPolicy},
    config::wire,
    limit::LimitPolicy,
    outlier::OutlierDetection,
    retry::BudgetPolicy,
    tls::{ClientTlsMode, ClientTlsPolicy},
};

/// Istio's `connectionPool`, as mesh's limits.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionPool {
    /// `http.http2MaxRequests` (requests in flight; with HTTP/1.1 also bounded by
    /// `tcp.maxConnections`) and `http.http1MaxPendingRequests` (the queue).
    pub limits: LimitPolicy,
    /// `http.maxRetries`: retries in flight at once.
    pub max_retries: Option<u32>,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `http.idleTimeout` (or `tcp.idleTimeout`).
    pub idle_timeout: Option<Duration>,
    /// `http.h2UpgradePolicy: UPGRADE`.
    pub h2_upgrade: bool,
}

pub(super) fn load_balancer(
    cx: &mut Ctx<'_>,
    at: &str,
    lb: &wire::LoadBalancerSettings,
) -> Option<LbPolicy> {
    for (field, set) in [
        ("localityLbSetting", lb.locality_lb_setting.is_some()),
        ("zoneAwareLbSetting", lb.zone_aware_lb_setting.is_some()),
        ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
        ("warmup", lb.warmup.is_some()),
    ] {
        if set {
            cx.p.unimplemented(format!("{at}.{field}"), field);
        }
    }
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        cx.p.error(at, "only one of simple or consistentHash");
        return None;
    }
    if let Some(simple) = &lb.simple {
        return match simple.as_str() {
            "UNSPECIFIED" | "LEAST_REQUEST" | "LEAST_CONN" => Some(LbPolicy::p2c_peak_ewma()),
            "ROUND_ROBIN" => Some(LbPolicy::RoundRobin),
            "RANDOM" => Some(LbPolicy::Random),
            "PASSTHROUGH" => {
                cx.p.unimplemented(sub(at, "simple"), "PASSTHROUGH load balancing");
                None
            }
            other => {
                cx.p.error(
                    sub(at, "simple"),
                    format!("{other:?} is not one of UNSPECIFIED, LEAST_REQUEST, LEAST_CONN, ROUND_ROBIN, RANDOM, PASSTHROUGH"),
                );
                None
            }
        };
    }
    let ch = lb.consistent_hash.as_ref()?;
    let f = sub(at, "consistentHash");
    let keys = [
        ch.http_header_name.is_some(),
        ch.http_cookie.is_some(),
        ch.use_source_ip.is_some(),
        ch.http_query_parameter_name.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if keys != 1 {
        cx.p.error(
            &f,
            "needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        );
        return None;
    }
    if ch.maglev.is_some() {
        cx.p.unimplemented(sub(&f, "maglev"), "maglev (mesh hashes on a ring)");
    }
    let hash_on = if let Some(h) = &ch.http_header_name {
        match h.to_ascii_lowercase().parse::<HeaderKey>() {
            Ok(k) => HashOn::Header(k),
            Err(e) => {
                cx.p.error(sub(&f, "httpHeaderName"), e.to_string());
                return None;
            }
        }
    } else if let Some(c) = &ch.http_cookie {
        match c.name.as_deref() {
            Some(n) if !n.is_empty() => HashOn::Cookie(n.to_owned()),
            _ => {
                cx.p.error(sub(&f, "httpCookie.name"), "a cookie needs a name");
                return None;
            }
        }
    } else if let Some(q) = &ch.http_query_parameter_name {
        HashOn::QueryParameter(q.clone())
    } else if ch.use_source_ip == Some(true) {
        HashOn::SourceIp
    } else {
        cx.p.error(sub(&f, "useSourceIp"), "useSourceIp: false names no key");
        return None;
    };
    let ring = ch
        .ring_hash
        .as_ref()
        .and_then(|r| r.minimum_ring_size)
        .or(ch.minimum_ring_size)
        .unwrap_or(crate::balance::DEFAULT_MIN_RING_SIZE as u64);
    if ring == 0 || ring > 8_388_608 {
        cx.p.error(sub(&f, "ringHash.minimumRingSize"), "must be 1 to 8388608");
        return None;
    }
    Some(LbPolicy::ConsistentHash {
        hash_on,
        min_ring_size: ring as usize,
    })
}

fn nonneg(cx: &mut Ctx<'_>, at: &str, v: Option<i32>) -> Option<u32> {
    match v {
        Some(n) if n < 0 => {
            cx.p.error(at, format!("{n} must not be negative"));
            None
        }
        Some(n) => Some(n as u32),
        None => None,
    }
}

pub(super) fn connection_pool(
    cx: &mut Ctx<'_>,
    at: &str,
    cp: &wire::ConnectionPoolSettings,
) -> Option<ConnectionPool> {
    let mut out = ConnectionPool::default();
    let mut max_connections = None;
    if let Some(tcp) = &cp.tcp {
        let f = sub(at, "tcp");
        max_connections = nonneg(cx, &sub(&f, "maxConnections"), tcp.max_connections);
        out.connect_timeout =
            opt_duration(&mut cx.p, &sub(&f, "connectTimeout"), &tcp.connect_timeout);
        out.idle_timeout = opt_duration(&mut cx.p, &sub(&f, "idleTimeout"), &tcp.idle_timeout);
        if tcp.tcp_keepalive.is_some() {
            cx.p.unimplemented(
                sub(&f, "tcpKeepalive"),
                "tcpKeepalive (the client's ClientSettings::tcp_keepalive applies)",
            );
        }
        if tcp.max_connection_duration.is_some() {
            cx.p.unimplemented(sub(&f, "maxConnectionDuration"), "maxConnectionDuration");
        }
    }
    let mut max_requests = None;
    if let Some(h) = &cp.http {
        let f = sub(at, "http");
        if let Some(n) = nonneg(
            cx,
            &format!("{f}.http1MaxPendingRequests"),
            h.http1_max_pending_requests,
        ) {
            out.limits.max_pending_requests = n;
        }
        max_requests = nonneg(cx, &format!("{f}.http2MaxRequests"), h.http2_max_requests);
        out.max_retries = nonneg(cx, &sub(&f, "maxRetries"), h.max_retries);
        if let Some(t) = opt_duration(&mut cx.p, &sub(&f, "idleTimeout"), &h.idle_timeout) {
            out.idle_timeout = Some(t);
        }
        match h.h2_upgrade_policy.as_deref() {
            None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => {}
            Some("UPGRADE") => out.h2_upgrade = true,
            Some(other) => cx.p.error(
                format!("{f}.h2UpgradePolicy"),
                format!("{other:?} is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
            ),
        }
        if h.max_requests_per_connection.is_some_and(|n| n != 0) {
            cx.p.unimplemented(
                sub(&f, "maxRequestsPerConnection"),
                "maxRequestsPerConnection",
            );
        }
        for (field, set) in [
            ("useClientProtocol", h.use_client_protocol == Some(true)),
            ("maxConcurrentStreams", h.max_concurrent_streams.is_some()),
            ("http2KeepAlive", h.http2_keep_alive.is_some()),
        ] {
            if set {
                cx.p.unimplemented(format!("{f}.{field}"), field);
            }
        }
    }
    // Envoy's max_requests bounds requests in flight; over HTTP/1.1 one connection carries
    // one request, so maxConnections bounds them too.
    let limit = match (max_requests, max_connections) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if limit == Some(0) {
        cx.p.error(at, "a limit of 0 would refuse every request");
        return None;
    }
    if limit.is_some() {
        out.limits.max_concurrent_requests = limit;
    }
    Some(out)
}

pub(super) fn outlier(
    cx: &mut Ctx<'_>,
    at: &str,
    od: &wire::OutlierDetection,
) -> Option<OutlierDetection> {
    for (field, set) in [
        (
            "splitExternalLocalOriginErrors",
            od.split_external_local_origin_errors == Some(true),
        ),
        (
            "consecutiveLocalOriginFailures",
            od.consecutive_local_origin_failures.is_some(),
        ),
        (
            "consecutiveGatewayErrors",
            od.consecutive_gateway_errors.is_some_and(|n| n > 0),
        ),
        (
            "minHealthPercent",
            od.min_health_percent.is_some_and(|n| n != 0),
        ),
        (
            "outlierDetectionHttpErrorCodes",
            !od.outlier_detection_http_error_codes.is_empty(),
        ),
    ] {
        if set {
            cx.p.unimplemented(format!("{at}.{field}"), field);
        }
    }
    if od.interval.is_some() {
        // mesh judges on every response, not on a timer: the interval has nothing to pace.
        opt_duration(&mut cx.p, &sub(at, "interval"), &od.interval);
    }
    let consecutive = match (od.consecutive_5xx_errors, od.consecutive_errors) {
        (Some(n), _) => Some(n),
        (None, Some(n)) if n >= 0 => {
            cx.p.warn(
                sub(at, "consecutiveErrors"),
                "deprecated: use consecutive5xxErrors",
            );
            Some(n as u32)
        }
        (None, Some(n)) => {
            cx.p.error(
                sub(at, "consecutiveErrors"),
                format!("{n} must not be negative"),
            );
            None
        }
        // Istio's default.
        (None, None) => Some(5),
    };
    let base = opt_duration(
        &mut cx.p,
        &sub(at, "baseEjectionTime"),
        &od.base_ejection_time,
    )
    .unwrap_or(Duration::from_secs(30));
    let max_pct = match od.max_ejection_percent {
        None => 10,
        Some(n) if (0..=100).contains(&n) => n as u32,
        Some(n) => {
            cx.p.error(
                sub(at, "maxEjectionPercent"),
                format!("{n} is not 0 to 100"),
            );
            return None;
        }
    };
    let defaults = OutlierDetection::default();
    Some(OutlierDetection {
        consecutive_failures: consecutive.filter(|n| *n > 0),
        // Istio never programs success-rate ejection.
        success_rate: None,
        base_ejection_time: base,
        max_ejection_time: defaults.max_ejection_time.max(base),
        max_ejection_percent: max_pct,
    })
}

pub(super) fn client_tls(
    cx: &mut Ctx<'_>,
    at: &str,
    t: &wire::ClientTlsSettings,
) -> Option<ClientTlsPolicy> {
    let others = t.client_certificate.is_some()
        || t.private_key.is_some()
        || t.ca_certificates.is_some()
        || t.credential_name.is_some()
        || !t.subject_alt_names.is_empty()
        || t.sni.is_some()
        || t.insecure_skip_verify.is_some()
        || t.ca_crl.is_some();
    match t.mode.as_deref().unwrap_or("DISABLE") {
        "DISABLE" => Some(ClientTlsPolicy {
            mode: ClientTlsMode::Disable,
            identity: None,
        }),
        "ISTIO_MUTUAL" => {
            if others {
                cx.p.error(
                    at,
                    "ISTIO_MUTUAL takes no other tls field (certificates come from the mesh)",
                );
                return None;
            }
            Some(ClientTlsPolicy {
                mode: ClientTlsMode::Mutual,
                identity: None,
            })
        }
        m @ ("SIMPLE" | "MUTUAL") => {
            cx.p.unimplemented(
                sub(at, "mode"),
                &format!("tls mode {m} (TLS origination with your own certificates)"),
            );
            None
        }
        other => {
            cx.p.error(
                sub(at, "mode"),
                format!("{other:?} is not one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
            );
            None
        }
    }
}

pub(super) fn retry_budget(
    cx: &mut Ctx<'_>,
    at: &str,
    b: &wire::RetryBudget,
) -> Option<BudgetPolicy> {
    let mut out = BudgetPolicy::default();
    if let Some(p) = b.percent {
        if !(0.0..=100.0).contains(&p) {
            cx.p.error(sub(at, "percent"), format!("{p} is not a percentage"));
            return None;
        }
        out.ratio = (p / 100.0) as f32;
    }
    if let Some(n) = b.min_retry_concurrency {
        // Istio's floor is a number of retries in flight; mesh's a rate: the same number per
        // second is the nearest reading.
        out.min_per_second = n;
    }
    if let Some(t) = &b.budget_interval {
        if let Some(d) = duration(&mut cx.p, &sub(at, "budgetInterval"), t) {
            out.ttl = d;
        }
    }
    match out.validate() {
        Ok(()) => Some(out),
        Err(e) => {
            cx.p.error(format!("{at}.{}", e.field), e.reason);
            None
        }
    }
}
