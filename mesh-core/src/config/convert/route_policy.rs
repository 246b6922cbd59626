//! The policies of one VirtualService route: retries, faults, mirrors and rewrites.

use super::{
    Ctx,
    common::{GRPC_CODES, destination, duration, nth, opt_duration, percentage, sub},
};
use crate::{
    config::wire,
    retry::{Backoff, RetryOn, RetryPolicy},
    route::{Abort, FaultPolicy, MirrorPolicy, Percentage, Re2, Rewrite, UriRewrite},
};

pub(super) fn retry(cx: &mut Ctx<'_>, at: &str, r: &wire::HttpRetry) -> Option<RetryPolicy> {
    let attempts = r.attempts.unwrap_or(0);
    if attempts < 0 {
        cx.p.error(sub(at, "attempts"), "must not be negative");
        return None;
    }
    if attempts == 0 {
        if r.per_try_timeout.is_some()
            || r.retry_on.is_some()
            || r.retry_remote_localities.is_some()
        {
            cx.p.error(
                at,
                "http retry policy configured when attempts are set to 0 (disabled): set attempts, or remove the other fields",
            );
        }
        return None;
    }
    if attempts > 10 {
        cx.p.error(
            sub(at, "attempts"),
            format!("{attempts}: mesh allows at most 10 retries (stricter than Istio: every retry is a request the destination must absorb)"),
        );
        return None;
    }
    if r.retry_remote_localities == Some(true) {
        cx.p.unimplemented(sub(at, "retryRemoteLocalities"), "retryRemoteLocalities");
    }
    if r.retry_ignore_previous_hosts == Some(false) {
        cx.p.unimplemented(
            sub(at, "retryIgnorePreviousHosts"),
            "retryIgnorePreviousHosts: false (mesh always retries on another endpoint when there is one)",
        );
    }
    let mut policy = RetryPolicy {
        attempts: attempts as u32,
        ..RetryPolicy::default()
    };
    policy.per_try_timeout = opt_duration(&mut cx.p, &sub(at, "perTryTimeout"), &r.per_try_timeout);
    if let Some(b) = &r.backoff {
        if let Some(base) = duration(&mut cx.p, &sub(at, "backoff"), b) {
            // Envoy: the maximum interval is 10 times the base.
            policy.backoff = Backoff {
                base,
                max: base * 10,
                ..Backoff::default()
            };
        }
    }
    if let Some(on) = &r.retry_on {
        policy.retry_on = retry_on(cx, &sub(at, "retryOn"), on)?;
    }
    Some(policy)
}

/// Istio's `retryOn` (Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` tokens, and bare
/// status codes) as mesh's [`RetryOn`].
fn retry_on(cx: &mut Ctx<'_>, at: &str, text: &str) -> Option<RetryOn> {
    let mut on = RetryOn {
        statuses: Vec::new(),
        grpc_statuses: Vec::new(),
        connect_failure: false,
        refused_stream: false,
        per_try_timeout: false,
        reset: false,
    };
    let mut ok = true;
    // Istio's validation splits on ',' without trimming ("5xx, reset" is rejected); its
    // translation trims. mesh trims, and says so in the docs.
    for token in text.split(',').map(str::trim) {
        let mut add = |s: std::ops::RangeInclusive<u16>| on.statuses.extend(s);
        match token {
            "5xx" => {
                add(500..=599);
                on.connect_failure = true;
                on.refused_stream = true;
                on.per_try_timeout = true;
                on.reset = true;
            }
            "gateway-error" => {
                add(502..=504);
                on.per_try_timeout = true;
            }
            "retriable-4xx" => add(409..=409),
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "reset" => {
                on.reset = true;
                on.per_try_timeout = true;
            }
            "reset-before-request" => {
                on.connect_failure = true;
                on.refused_stream = true;
            }
            // The statuses come as bare codes in the same list.
            "retriable-status-codes" => {}
            "cancelled" => on.grpc_statuses.push(1),
            "deadline-exceeded" => on.grpc_statuses.push(4),
            "internal" => on.grpc_statuses.push(13),
            "resource-exhausted" => on.grpc_statuses.push(8),
            "unavailable" => on.grpc_statuses.push(14),
            "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {
                cx.p.unimplemented(at, &format!("retryOn token {token:?}"));
            }
            "" => {
                cx.p.error(at, format!("{text:?} has an empty entry"));
                ok = false;
            }
            other => match other.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => on.statuses.push(code),
                _ => {
                    cx.p.error(
                        at,
                        format!(
                            "{other:?} is not a retry condition: use 5xx, gateway-error, reset, connect-failure, refused-stream, reset-before-request, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, unavailable, or an HTTP status"
                        ),
                    );
                    ok = false;
                }
            },
        }
    }
    on.statuses.sort_unstable();
    on.statuses.dedup();
    on.grpc_statuses.sort_unstable();
    on.grpc_statuses.dedup();
    ok.then_some(on)
}

pub(super) fn fault(
    cx: &mut Ctx<'_>,
    at: &str,
    f: &wire::HttpFaultInjection,
) -> Option<FaultPolicy> {
    if f.delay.is_none() && f.abort.is_none() {
        cx.p.error(at, "a fault needs a delay or an abort");
        return None;
    }
    let mut out = FaultPolicy::default();
    if let Some(d) = &f.delay {
        let da = sub(at, "delay");
        if d.exponential_delay.is_some() {
            cx.p.error(
                sub(&da, "exponentialDelay"),
                "exponentialDelay is not supported (Istio rejects it too)",
            );
        }
        let pct = percentage(
            &mut cx.p,
            &sub(&da, "percentage"),
            &d.percentage,
            Some((&sub(&da, "percent"), d.percent.map(i64::from))),
            Percentage::NONE,
        );
        match &d.fixed_delay {
            Some(t) => {
                if let Some(delay) = duration(&mut cx.p, &sub(&da, "fixedDelay"), t) {
                    out.delay = Some((delay, pct));
                }
            }
            None if d.exponential_delay.is_none() => {
                cx.p.error(sub(&da, "fixedDelay"), "a delay needs fixedDelay");
            }
            None => {}
        }
    }
    if let Some(a) = &f.abort {
        let aa = sub(at, "abort");
        if a.percent.is_some() {
            cx.p.warn(sub(&aa, "percent"), "deprecated: use percentage.value");
        }
        let pct = percentage(
            &mut cx.p,
            &sub(&aa, "percentage"),
            &a.percentage,
            Some((&sub(&aa, "percent"), a.percent.map(i64::from))),
            Percentage::NONE,
        );
        let kinds = [
            a.http_status.is_some(),
            a.grpc_status.is_some(),
            a.http2_error.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if kinds > 1 {
            cx.p.error(&aa, "only one of httpStatus, grpcStatus or http2Error");
        } else if let Some(s) = a.http_status {
            if (200..=599).contains(&s) {
                out.abort = Some((Abort::Http(s as u16), pct));
            } else {
                cx.p.error(
                    sub(&aa, "httpStatus"),
                    format!("{s} is not an HTTP status (200 to 599)"),
                );
            }
        } else if let Some(name) = &a.grpc_status {
            match GRPC_CODES.iter().find(|(n, _)| n == name) {
                Some((_, 0)) | None => cx.p.error(
                    sub(&aa, "grpcStatus"),
                    format!("{name:?} is not a gRPC status name other than OK (e.g. UNAVAILABLE)"),
                ),
                Some((_, code)) => out.abort = Some((Abort::Grpc(*code), pct)),
            }
        } else if a.http2_error.is_some() {
            cx.p.error(
                format!("{aa}.http2Error"),
                "http2Error is not supported (Istio rejects it too)",
            );
        } else {
            cx.p.warn(
                &aa,
                "an abort without httpStatus or grpcStatus does nothing",
            );
        }
    }
    Some(out)
}

pub(super) fn mirrors(cx: &mut Ctx<'_>, at: &str, r: &wire::HttpRoute) -> Vec<MirrorPolicy> {
    let mut out = Vec::new();
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        cx.p.error(sub(at, "mirrors"), "mirror and mirrors cannot both be set");
        return out;
    }
    let deprecated = r.mirror_percent.or(r.mirror_percent_snake);
    if deprecated.is_some() {
        cx.p.warn(
            sub(at, "mirrorPercent"),
            "mirrorPercent is deprecated: use mirrorPercentage",
        );
    }
    if let Some(m) = &r.mirror {
        if let Some(backend) = destination(cx, &sub(at, "mirror"), &Some(m.clone())) {
            let percentage = percentage(
                &mut cx.p,
                &sub(at, "mirrorPercentage"),
                &r.mirror_percentage,
                Some((&sub(at, "mirrorPercent"), deprecated.map(i64::from))),
                Percentage::ALL,
            );
            out.push(MirrorPolicy {
                backend,
                percentage,
            });
        }
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let f = nth(at, "mirrors", i);
        if let Some(backend) = destination(cx, &sub(&f, "destination"), &m.destination) {
            let percentage = percentage(
                &mut cx.p,
                &sub(&f, "percentage"),
                &m.percentage,
                None,
                Percentage::ALL,
            );
            out.push(MirrorPolicy {
                backend,
                percentage,
            });
        }
    }
    out
}

pub(super) fn rewrite(cx: &mut Ctx<'_>, at: &str, rw: &wire::HttpRewrite) -> Option<Rewrite> {
    if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
        cx.p.error(at, "uri and uriRegexRewrite cannot both be set");
        return None;
    }
    let uri = if let Some(u) = &rw.uri {
        Some(UriRewrite::Prefix(u.clone()))
    } else if let Some(rr) = &rw.uri_regex_rewrite {
        let f = sub(at, "uriRegexRewrite");
        let (Some(m), Some(with)) = (&rr.r#match, &rr.rewrite) else {
            cx.p.error(&f, "needs both match and rewrite");
            return None;
        };
        match Re2::new(m) {
            // Envoy (RE2) writes groups as \1; Rust's regex as ${1}.
            Ok(pattern) => Some(UriRewrite::Regex {
                pattern,
                with: backslash_groups(with),
            }),
            Err(e) => {
                cx.p.error(sub(&f, "match"), e);
                return None;
            }
        }
    } else {
        None
    };
    if let Some(a) = &rw.authority {
        if a.is_empty() || http::uri::Authority::try_from(a.as_str()).is_err() {
            cx.p.error(
                sub(at, "authority"),
                format!("{a:?} is not a valid authority"),
            );
            return None;
        }
    }
    Some(Rewrite {
        uri,
        authority: rw.authority.clone(),
    })
}

/// `\1` → `${1}`.
fn backslash_groups(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek().is_some_and(char::is_ascii_digit) {
            let mut n = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                n.push(*d);
                chars.next();
            }
            out.push_str(&format!("${{{n}}}"));
        } else if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
    out
}
