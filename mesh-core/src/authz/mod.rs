//! Authorization: which callers may do what, shaped like Istio's `AuthorizationPolicy`.
//!
//! An [`Authorizer`] holds policies; each has an action, `ALLOW` or `DENY`, and rules. A rule
//! matches a request when **any** of its `from` sources matches the caller (by SPIFFE ID
//! principal) **and** any of its `to` operations matches the request (path and method); an empty
//! `from` or `to` matches everything. Decisions follow Istio:
//!
//! 1. if any `DENY` rule matches, the request is denied;
//! 2. otherwise, if there are `ALLOW` policies, the request is allowed only if one of their
//!    rules matches;
//! 3. otherwise it is allowed.
//!
//! Principals are written as in Istio, without the `spiffe://` scheme:
//! `cluster.local/ns/default/sa/productpage` (exact), `cluster.local/ns/default/*` (prefix),
//! `*/sa/productpage` (suffix) or `*` (any authenticated caller). A plaintext caller has no
//! principal and matches no principal pattern. Paths are exact (`/health`) or prefix
//! (`/api/*`); methods are exact (`GET`).
//!
//! Every decision is a `debug` event naming the rule that decided it (`policy/rule[i]`); denials
//! are also counted by the server layers.
//!
//! ```
//! use mesh_core::authz::{Authorizer, AuthorizationPolicy};
//!
//! let policy: AuthorizationPolicy = serde_json::from_str(r#"{
//!   "name": "reviews-viewer",
//!   "action": "ALLOW",
//!   "rules": [{
//!     "from": [{"source": {"principals": ["cluster.local/ns/default/sa/productpage"]}}],
//!     "to": [{"operation": {"methods": ["GET"], "paths": ["/reviews/*"]}}]
//!   }]
//! }"#).unwrap();
//! let authz = Authorizer::new(vec![policy]).unwrap();
//! let pp = "spiffe://cluster.local/ns/default/sa/productpage".parse().unwrap();
//! assert!(authz.evaluate(Some(&pp), &http::Method::GET, "/reviews/1").allowed);
//! assert!(!authz.evaluate(None, &http::Method::GET, "/reviews/1").allowed);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{identity::SpiffeId, policy_error::PolicyError};

/// What a matching rule does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow the request.
    #[default]
    Allow,
    /// Deny the request.
    Deny,
}

/// One policy (Istio `AuthorizationPolicy.spec`, with a name for decisions to cite).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Name used in decisions and logs.
    pub name: String,
    /// `ALLOW` (default) or `DENY`.
    pub action: Action,
    /// Rules; a policy without rules matches nothing.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// Callers (any of them); empty: anyone.
    pub from: Vec<From>,
    /// Operations (any of them); empty: anything.
    pub to: Vec<To>,
}

/// A `from` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// Who the caller is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Source {
    /// Principal patterns (exact, `prefix*`, `*suffix`, `*`).
    pub principals: Vec<String>,
}

/// A `to` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// What the request does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Operation {
    /// Path patterns (exact, or `prefix*`); empty: any.
    pub paths: Vec<String>,
    /// Methods; empty: any.
    pub methods: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    fn parse(s: &str, suffix_allowed: bool) -> Result<Self, String> {
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

    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => v == e,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    id: String,
    principals: Option<Vec<Pattern>>,
    operations: Option<Vec<(Vec<Pattern>, Vec<http::Method>)>>,
}

impl CompiledRule {
    fn matches(&self, principal: Option<&str>, method: &http::Method, path: &str) -> bool {
        let from = match &self.principals {
            None => true,
            Some(pats) => principal.is_some_and(|p| pats.iter().any(|pat| pat.matches(p))),
        };
        let to = match &self.operations {
            None => true,
            Some(ops) => ops.iter().any(|(paths, methods)| {
                (paths.is_empty() || paths.iter().any(|p| p.matches(path)))
                    && (methods.is_empty() || methods.contains(method))
            }),
        };
        from && to
    }
}

/// The outcome of one authorization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The rule that decided (`policy/rule[i]`), or why no rule did.
    pub by: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} by {}",
            if self.allowed { "allowed" } else { "denied" },
            self.by
        )
    }
}

/// Evaluates requests against a set of policies; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Authorizer {
    deny: Vec<CompiledRule>,
    allow: Vec<CompiledRule>,
    has_allow_policy: bool,
}

impl Authorizer {
    /// Compiles policies; invalid patterns or methods are errors naming the field.
    pub fn new(policies: Vec<AuthorizationPolicy>) -> Result<Self, PolicyError> {
        let mut out = Authorizer::default();
        for (pi, policy) in policies.iter().enumerate() {
            let pname = if policy.name.is_empty() {
                format!("policies[{pi}]")
            } else {
                policy.name.clone()
            };
            if policy.action == Action::Allow {
                out.has_allow_policy = true;
            }
            for (ri, rule) in policy.rules.iter().enumerate() {
                let field = |rest: String| format!("{pname}.rules[{ri}].{rest}");
                let principals = if rule.from.is_empty() {
                    None
                } else {
                    let mut pats = Vec::new();
                    for (fi, f) in rule.from.iter().enumerate() {
                        for (k, p) in f.source.principals.iter().enumerate() {
                            let p = p.strip_prefix("spiffe://").unwrap_or(p);
                            pats.push(Pattern::parse(p, true).map_err(|reason| {
                                PolicyError::new(
                                    field(format!("from[{fi}].source.principals[{k}]")),
                                    reason,
                                )
                            })?);
                        }
                    }
                    Some(pats)
                };
                let operations = if rule.to.is_empty() {
                    None
                } else {
                    let mut ops = Vec::new();
                    for (ti, t) in rule.to.iter().enumerate() {
                        let mut paths = Vec::new();
                        for (k, p) in t.operation.paths.iter().enumerate() {
                            if !p.starts_with('/') && p != "*" {
                                return Err(PolicyError::new(
                                    field(format!("to[{ti}].operation.paths[{k}]")),
                                    format!("{p:?} must start with '/'"),
                                ));
                            }
                            paths.push(Pattern::parse(p, false).map_err(|reason| {
                                PolicyError::new(
                                    field(format!("to[{ti}].operation.paths[{k}]")),
                                    reason,
                                )
                            })?);
                        }
                        let mut methods = Vec::new();
                        for (k, m) in t.operation.methods.iter().enumerate() {
                            methods.push(http::Method::from_bytes(m.as_bytes()).map_err(|_| {
                                PolicyError::new(
                                    field(format!("to[{ti}].operation.methods[{k}]")),
                                    format!("{m:?} is not an HTTP method"),
                                )
                            })?);
                        }
                        ops.push((paths, methods));
                    }
                    Some(ops)
                };
                let compiled = CompiledRule {
                    id: format!("{pname}/rules[{ri}]"),
                    principals,
                    operations,
                };
                match policy.action {
                    Action::Allow => out.allow.push(compiled),
                    Action::Deny => out.deny.push(compiled),
                }
            }
        }
        Ok(out)
    }

    /// Decides one request. `principal` is the caller's verified identity (`None`: plaintext).
    pub fn evaluate(
        &self,
        principal: Option<&SpiffeId>,
        method: &http::Method,
        path: &str,
    ) -> Decision {
        let p = principal.map(|id| id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str()));
        let decision = if let Some(rule) = self.deny.iter().find(|r| r.matches(p, method, path)) {
            Decision {
                allowed: false,
                by: rule.id.clone(),
            }
        } else if self.has_allow_policy {
            match self.allow.iter().find(|r| r.matches(p, method, path)) {
                Some(rule) => Decision {
                    allowed: true,
                    by: rule.id.clone(),
                },
                None => Decision {
                    allowed: false,
                    by: "no ALLOW rule matched".into(),
                },
            }
        } else {
            Decision {
                allowed: true,
                by: "no ALLOW policy".into(),
            }
        };
        tracing::debug!(principal = p.unwrap_or("(plaintext)"), %method, path, allowed = decision.allowed,
            rule = %decision.by, "authorization decision");
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        name: &str,
        action: Action,
        principals: &[&str],
        paths: &[&str],
        methods: &[&str],
    ) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: name.into(),
            action,
            rules: vec![Rule {
                from: if principals.is_empty() {
                    vec![]
                } else {
                    vec![From {
                        source: Source {
                            principals: principals.iter().map(|s| s.to_string()).collect(),
                        },
                    }]
                },
                to: if paths.is_empty() && methods.is_empty() {
                    vec![]
                } else {
                    vec![To {
                        operation: Operation {
                            paths: paths.iter().map(|s| s.to_string()).collect(),
                            methods: methods.iter().map(|s| s.to_string()).collect(),
                        },
                    }]
                },
            }],
        }
    }

    fn id(s: &str) -> SpiffeId {
        format!("spiffe://{s}").parse().unwrap()
    }

    #[test]
    fn deny_beats_allow_and_allow_policies_close_the_door() {
        let a = Authorizer::new(vec![
            policy(
                "viewers",
                Action::Allow,
                &["cluster.local/ns/default/*"],
                &["/reviews/*"],
                &["GET"],
            ),
            policy("no-ratings", Action::Deny, &["*/sa/ratings"], &[], &[]),
        ])
        .unwrap();
        let pp = id("cluster.local/ns/default/sa/productpage");
        let ratings = id("cluster.local/ns/default/sa/ratings");
        assert!(
            a.evaluate(Some(&pp), &http::Method::GET, "/reviews/1")
                .allowed
        );
        let d = a.evaluate(Some(&ratings), &http::Method::GET, "/reviews/1");
        assert!(!d.allowed);
        assert_eq!(d.by, "no-ratings/rules[0]");
        let d = a.evaluate(Some(&pp), &http::Method::POST, "/reviews/1");
        assert_eq!((d.allowed, d.by.as_str()), (false, "no ALLOW rule matched"));
        assert!(
            !a.evaluate(None, &http::Method::GET, "/reviews/1").allowed,
            "plaintext has no principal"
        );
        assert!(
            !a.evaluate(
                Some(&id("other.td/ns/default/sa/x")),
                &http::Method::GET,
                "/reviews/1"
            )
            .allowed
        );
    }

    #[test]
    fn no_allow_policy_allows_everything_not_denied() {
        let a = Authorizer::new(vec![policy(
            "deny-admin",
            Action::Deny,
            &[],
            &["/admin*"],
            &[],
        )])
        .unwrap();
        assert!(a.evaluate(None, &http::Method::GET, "/").allowed);
        assert!(!a.evaluate(None, &http::Method::GET, "/admin/x").allowed);
        assert!(
            Authorizer::new(vec![])
                .unwrap()
                .evaluate(None, &http::Method::DELETE, "/x")
                .allowed
        );
    }

    #[test]
    fn invalid_patterns_name_the_field() {
        let err =
            Authorizer::new(vec![policy("p", Action::Allow, &["a*b"], &[], &[])]).unwrap_err();
        assert_eq!(err.field, "p.rules[0].from[0].source.principals[0]");
        let err =
            Authorizer::new(vec![policy("p", Action::Allow, &[], &["nope"], &[])]).unwrap_err();
        assert!(err.field.ends_with("paths[0]"), "{err}");
        let err =
            Authorizer::new(vec![policy("p", Action::Allow, &[], &[], &["GE T"])]).unwrap_err();
        assert!(err.field.ends_with("methods[0]"), "{err}");
    }
}
