//! Conversions every document kind shares: durations, string matches, percentages, headers.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::{
    config::{
        error::Problems,
        wire::{self, Percent},
    },
    route::{BackendRef, HeaderOps, Headers, Percentage, Re2, StringMatcher},
};

use super::Ctx;

/// A duration as Istio writes it: Go syntax, at least 1 ms, a whole number of milliseconds.
pub(crate) fn duration(p: &mut Problems<'_>, field: &str, text: &str) -> Option<Duration> {
    match crate::duration::parse(text) {
        Err(e) => {
            p.error(field, e.to_string());
            None
        }
        Ok(d) if d < Duration::from_millis(1) => {
            p.error(field, format!("{text:?} is below Istio's minimum of 1ms"));
            None
        }
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            p.error(
                field,
                format!("{text:?} is not a whole number of milliseconds"),
            );
            None
        }
        Ok(d) => Some(d),
    }
}

/// An optional duration field.
pub(crate) fn opt_duration(
    p: &mut Problems<'_>,
    field: &str,
    text: &Option<String>,
) -> Option<Duration> {
    text.as_deref().and_then(|t| duration(p, field, t))
}

/// Istio's `StringMatch` (`exact` | `prefix` | `regex`, exactly one). `empty_prefix_ok`: an
/// empty prefix is allowed (Istio allows it for `uri` only).
pub(crate) fn string_match(
    p: &mut Problems<'_>,
    field: &str,
    m: &wire::StringMatch,
    empty_prefix_ok: bool,
) -> Option<StringMatcher> {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        p.error(field, "only one of exact, prefix or regex may be set");
        return None;
    }
    if let Some(e) = &m.exact {
        return Some(StringMatcher::Exact(e.clone()));
    }
    if let Some(pre) = &m.prefix {
        if pre.is_empty() && !empty_prefix_ok {
            p.error(sub(field, "prefix"), "prefix must not be empty");
            return None;
        }
        return Some(StringMatcher::Prefix(pre.clone()));
    }
    if let Some(r) = &m.regex {
        return match Re2::new(r) {
            Ok(re) => Some(StringMatcher::Regex(re)),
            Err(e) => {
                p.error(sub(field, "regex"), e);
                None
            }
        };
    }
    // `{}`: the caller decides (a header presence check, or an error).
    None
}

/// A percentage: `percentage.value` (0 to 100; Istio requires 0 or at least 0.0001) or the
/// deprecated integer `percent`; `default` when neither is set.
pub(crate) fn percentage(
    p: &mut Problems<'_>,
    field: &str,
    value: &Option<Percent>,
    deprecated: Option<(&str, Option<i64>)>,
    default: Percentage,
) -> Percentage {
    if let Some(Percent { value: Some(v) }) = value {
        if !v.is_finite() || *v < 0.0 || *v > 100.0 {
            p.error(
                sub(field, "value"),
                format!("{v} is not a percentage (0 to 100)"),
            );
            return Percentage::NONE;
        }
        if *v > 0.0 && *v < 0.0001 {
            p.error(sub(field, "value"), "must be 0 or at least 0.0001");
            return Percentage::NONE;
        }
        return Percentage::from_percent(*v);
    }
    if let Some(Percent { value: None }) = value {
        return Percentage::NONE;
    }
    if let Some((name, Some(n))) = deprecated {
        if !(0..=100).contains(&n) {
            p.error(name, format!("{n} is not a percentage (0 to 100)"));
            return Percentage::NONE;
        }
        return Percentage::from_percent(n as f64);
    }
    default
}

/// Header operations (`headers.request` / `headers.response`).
pub(crate) fn headers(p: &mut Problems<'_>, field: &str, h: &Option<wire::Headers>) -> Headers {
    let Some(h) = h else {
        return Headers::default();
    };
    Headers {
        request: header_ops(p, &sub(field, "request"), &h.request),
        response: header_ops(p, &sub(field, "response"), &h.response),
    }
}

fn header_ops(
    p: &mut Problems<'_>,
    field: &str,
    ops: &Option<wire::HeaderOperations>,
) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let mut out = HeaderOps::default();
    let pair = |p: &mut Problems<'_>, kind: &str, k: &str, v: &str| {
        let at = format!("{field}.{kind}[{k:?}]");
        if k.starts_with(':') {
            p.error(at, "pseudo-headers cannot be modified");
            return None;
        }
        let name = match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
            Ok(n) => n,
            Err(_) => {
                p.error(at, format!("{k:?} is not a valid header name"));
                return None;
            }
        };
        match HeaderValue::from_str(v) {
            Ok(v) => Some((name, v)),
            Err(_) => {
                p.error(at, format!("{v:?} is not a valid header value"));
                None
            }
        }
    };
    for (k, v) in &ops.set {
        if let Some(x) = pair(p, "set", k, v) {
            out.set.push(x);
        }
    }
    for (k, v) in &ops.add {
        if let Some(x) = pair(p, "add", k, v) {
            out.add.push(x);
        }
    }
    for (i, k) in ops.remove.iter().enumerate() {
        match HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()) {
            Ok(n) if !k.starts_with(':') => out.remove.push(n),
            _ => p.error(
                nth(field, "remove", i),
                format!("{k:?} is not a header that can be removed"),
            ),
        }
    }
    out
}

/// A port number field (1 to 65535).
pub(crate) fn port(p: &mut Problems<'_>, field: &str, n: u32) -> Option<u16> {
    match u16::try_from(n) {
        Ok(0) | Err(_) => {
            p.error(field, format!("{n} is not a port number (1 to 65535)"));
            None
        }
        Ok(port) => Some(port),
    }
}

/// Whether a namespace sees a document with this `exportTo` (empty: every namespace).
pub(crate) fn exported_to(export_to: &[String], doc_ns: &str, ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == ns || (e == "." && doc_ns == ns))
}

/// Checks `exportTo` values (`.`, `*` or namespace names; `.`/`*` not mixed with others).
pub(crate) fn check_export_to(p: &mut Problems<'_>, field: &str, export_to: &[String]) {
    let special = export_to.iter().filter(|e| *e == "*" || *e == ".").count();
    if export_to.iter().any(|e| e == "*") && export_to.len() > 1 {
        p.error(field, "\"*\" cannot be combined with other namespaces");
    } else if special > 1 {
        p.error(field, "\".\" and \"*\" cannot be combined");
    }
}

/// gRPC status names (Istio's `grpcStatus` takes the name) and their codes.
pub(crate) const GRPC_CODES: [(&str, u16); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// A route's or a mirror's `destination`: host (expanded in the document's namespace), port
/// and subset.
pub(crate) fn destination(
    cx: &mut Ctx<'_>,
    at: &str,
    d: &Option<wire::Destination>,
) -> Option<BackendRef> {
    let Some(d) = d else {
        cx.p.error(at, "destination is required");
        return None;
    };
    let Some(host) = d.host.as_deref().filter(|h| !h.is_empty()) else {
        cx.p.error(sub(at, "host"), "host is required");
        return None;
    };
    if host.contains('*') {
        cx.p.error(sub(at, "host"), "a destination host cannot be a wildcard");
        return None;
    }
    let port = match d.port.as_ref().and_then(|p| p.number) {
        Some(n) => Some(port(&mut cx.p, &sub(at, "port.number"), n)?),
        None => None,
    };
    if let Some(s) = &d.subset {
        if !is_dns_label(s) {
            cx.p.error(
                sub(at, "subset"),
                format!("{s:?} is not a valid subset name (a DNS label)"),
            );
            return None;
        }
    }
    Some(BackendRef::new(
        &cx.naming.expand(host, cx.ns),
        port,
        d.subset.as_deref(),
    ))
}

/// A subset name: a DNS label.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The path of field `name` under `at` (`at.name`): built without the formatting machinery,
/// as every conversion builds many of them.
pub(crate) fn sub(at: &str, name: &str) -> String {
    [at, ".", name].concat()
}

/// The path of item `i` of list `name` under `at` (`at.name[i]`).
pub(crate) fn nth(at: &str, name: &str, i: usize) -> String {
    let mut s = String::with_capacity(at.len() + name.len() + 8);
    s.push_str(at);
    s.push('.');
    s.push_str(name);
    s.push('[');
    push_decimal(&mut s, i);
    s.push(']');
    s
}

fn push_decimal(s: &mut String, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend(digits[at..].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod path_tests {
    #[test]
    fn paths_read_as_format_writes_them() {
        assert_eq!(
            super::sub("spec.http[0]", "timeout"),
            "spec.http[0].timeout"
        );
        for i in [0, 7, 10, 123_456, usize::MAX] {
            assert_eq!(super::nth("spec", "http", i), format!("spec.http[{i}]"));
        }
    }
}
