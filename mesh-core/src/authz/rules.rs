//! Compiled authorization rules and the request they are evaluated against.

use http::{HeaderMap, HeaderName, Method};

use crate::identity::SpiffeId;

/// What an authorization decision looks at.
#[derive(Clone, Copy, Debug)]
pub struct AuthzRequest<'a> {
    /// The caller's verified identity (`None`: plaintext).
    pub principal: Option<&'a SpiffeId>,
    /// The method.
    pub method: &'a Method,
    /// The path (without the query string).
    pub path: &'a str,
    /// The request's host (`Host` / `:authority`, without the port).
    pub host: &'a str,
    /// The port the request came in on, when known.
    pub port: Option<u16>,
    /// The request headers, for `when` conditions on `request.headers[...]`.
    pub headers: Option<&'a HeaderMap>,
}

/// A value pattern as Istio writes them: exact, `prefix*`, `*suffix`, or `*` (any non-empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub(crate) fn parse(s: &str, suffix_allowed: bool) -> Result<Self, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        if let Some(p) = s.strip_suffix('*') {
            if p.contains('*') {
                return Err(format!("{s:?}: '*' only at the start or the end"));
            }
            return Ok(Pattern::Prefix(p.to_owned()));
        }
        if let Some(p) = s.strip_prefix('*') {
            if !suffix_allowed || p.contains('*') {
                return Err(format!("{s:?}: '*' only at the end"));
            }
            return Ok(Pattern::Suffix(p.to_owned()));
        }
        if s.contains('*') || s.is_empty() {
            return Err(format!("{s:?}: not a valid pattern"));
        }
        Ok(Pattern::Exact(s.to_owned()))
    }

    pub(crate) fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => !v.is_empty(),
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
        }
    }

    fn matches_ignore_case(&self, v: &str) -> bool {
        let lower = |s: &str| s.to_ascii_lowercase();
        match self {
            Pattern::Any => !v.is_empty(),
            Pattern::Exact(e) => v.eq_ignore_ascii_case(e),
            Pattern::Prefix(p) => lower(v).starts_with(&lower(p)),
            Pattern::Suffix(s) => lower(v).ends_with(&lower(s)),
        }
    }
}

/// Values a field must match (any of them; none: no condition) and must not match (none of
/// them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Values {
    pub(crate) any: Vec<Pattern>,
    pub(crate) not: Vec<Pattern>,
}

impl Values {
    fn is_empty(&self) -> bool {
        self.any.is_empty() && self.not.is_empty()
    }

    /// A missing attribute (a plaintext caller's principal) matches no positive pattern and
    /// no negative one.
    fn matches(&self, v: Option<&str>, ignore_case: bool) -> bool {
        let m = |p: &Pattern, v: &str| {
            if ignore_case {
                p.matches_ignore_case(v)
            } else {
                p.matches(v)
            }
        };
        let positive = self.any.is_empty() || v.is_some_and(|v| self.any.iter().any(|p| m(p, v)));
        let negative = v.is_some_and(|v| self.not.iter().any(|p| m(p, v)));
        positive && !negative
    }
}

/// Who the caller is (one `from.source`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SourceMatch {
    pub(crate) principals: Values,
    pub(crate) namespaces: Values,
    pub(crate) service_accounts: Values,
    pub(crate) trust_domains: Values,
}

impl SourceMatch {
    fn matches(&self, principal: Option<&str>) -> bool {
        let parts = principal.and_then(principal_parts);
        let parts = parts.as_ref();
        self.principals.matches(principal, false)
            && (self.namespaces.is_empty() || self.namespaces.matches(parts.map(|p| p.1), false))
            && (self.service_accounts.is_empty()
                || self
                    .service_accounts
                    .matches(parts.map(|p| p.3.as_str()), false))
            && (self.trust_domains.is_empty()
                || self.trust_domains.matches(parts.map(|p| p.0), false))
    }
}

/// `trust-domain/ns/<ns>/sa/<sa>` → (trust domain, namespace, service account, `ns/sa`).
fn principal_parts(p: &str) -> Option<(&str, &str, &str, String)> {
    let (td, rest) = p.split_once("/ns/")?;
    let (ns, sa) = rest.split_once("/sa/")?;
    Some((td, ns, sa, format!("{ns}/{sa}")))
}

/// What the request does (one `to.operation`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OperationMatch {
    pub(crate) hosts: Values,
    pub(crate) ports: Values,
    pub(crate) methods: Values,
    pub(crate) paths: Values,
}

impl OperationMatch {
    fn matches(&self, req: &AuthzRequest<'_>, path: &str) -> bool {
        let port = req.port.map(|p| p.to_string());
        self.hosts.matches(Some(req.host), true)
            && (self.ports.is_empty() || self.ports.matches(port.as_deref(), false))
            && self.methods.matches(Some(req.method.as_str()), false)
            && self.paths.matches(Some(path), false)
    }
}

/// The attribute a `when` condition reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConditionKey {
    Header(HeaderName),
    SourcePrincipal,
    SourceNamespace,
    DestinationPort,
}

/// One `when` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) key: ConditionKey,
    pub(crate) values: Values,
}

impl Condition {
    fn matches(&self, req: &AuthzRequest<'_>, principal: Option<&str>) -> bool {
        let owned;
        let value: Option<&str> = match &self.key {
            ConditionKey::Header(h) => req
                .headers
                .and_then(|hs| hs.get(h))
                .and_then(|v| v.to_str().ok()),
            ConditionKey::SourcePrincipal => principal,
            ConditionKey::SourceNamespace => principal.and_then(principal_parts).map(|p| p.1),
            ConditionKey::DestinationPort => {
                owned = req.port.map(|p| p.to_string());
                owned.as_deref()
            }
        };
        self.values.matches(value, false)
    }
}

/// One compiled rule: (any `from`) and (any `to`) and (every `when`); an empty list matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CompiledRule {
    pub(crate) id: String,
    pub(crate) from: Vec<SourceMatch>,
    pub(crate) to: Vec<OperationMatch>,
    pub(crate) when: Vec<Condition>,
}

impl CompiledRule {
    pub(crate) fn matches(
        &self,
        req: &AuthzRequest<'_>,
        principal: Option<&str>,
        path: &str,
    ) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(principal)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(req, path)))
            && self.when.iter().all(|c| c.matches(req, principal))
    }
}

/// The path as Istio's default normalization (`BASE`, RFC 3986) sees it: `.` and `..`
/// segments resolved, so `/public/../admin` is matched as `/admin`.
pub(crate) fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.split('/').any(|s| s == "." || s == "..") {
        return path.into();
    }
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || (trailing && !s.ends_with('/')) {
        s.push('/');
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_before_matching() {
        assert_eq!(normalize_path("/a/b"), "/a/b");
        assert_eq!(normalize_path("/public/../admin"), "/admin");
        assert_eq!(normalize_path("/a/./b/"), "/a/b/");
        assert_eq!(normalize_path("/.."), "/");
    }

    #[test]
    fn negative_values_exclude_and_missing_attributes_match_nothing() {
        let v = Values {
            any: vec![],
            not: vec![Pattern::Prefix("/admin".into())],
        };
        assert!(v.matches(Some("/x"), false));
        assert!(!v.matches(Some("/admin/y"), false));
        let p = Values {
            any: vec![Pattern::Any],
            not: vec![],
        };
        assert!(
            !p.matches(None, false),
            "`*` means any authenticated principal"
        );
    }
}
