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

mod rules;

pub use self::rules::AuthzRequest;
pub(crate) use self::rules::{
    CompiledRule, Condition, ConditionKey, OperationMatch, Pattern, SourceMatch, Values,
    normalize_path,
};
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
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Authorizer {
    deny: Vec<CompiledRule>,
    allow: Vec<CompiledRule>,
    audit: Vec<CompiledRule>,
    has_allow_policy: bool,
    /// The policies it was built from (`AuthorizationPolicy ns/name`), for explanations.
    sources: Vec<String>,
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
            out.sources.push(pname.clone());
            for (ri, rule) in policy.rules.iter().enumerate() {
                let field = |rest: String| format!("{pname}.rules[{ri}].{rest}");
                let mut from = Vec::new();
                for (fi, f) in rule.from.iter().enumerate() {
                    let mut pats = Vec::new();
                    for (k, p) in f.source.principals.iter().enumerate() {
                        let p = p.strip_prefix("spiffe://").unwrap_or(p);
                        pats.push(Pattern::parse(p, true).map_err(|reason| {
                            PolicyError::new(
                                field(format!("from[{fi}].source.principals[{k}]")),
                                reason,
                            )
                        })?);
                    }
                    from.push(SourceMatch {
                        principals: Values {
                            any: pats,
                            not: Vec::new(),
                        },
                        ..SourceMatch::default()
                    });
                }
                let mut to = Vec::new();
                {
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
                            http::Method::from_bytes(m.as_bytes()).map_err(|_| {
                                PolicyError::new(
                                    field(format!("to[{ti}].operation.methods[{k}]")),
                                    format!("{m:?} is not an HTTP method"),
                                )
                            })?;
                            methods.push(Pattern::Exact(m.clone()));
                        }
                        to.push(OperationMatch {
                            paths: Values {
                                any: paths,
                                not: Vec::new(),
                            },
                            methods: Values {
                                any: methods,
                                not: Vec::new(),
                            },
                            ..OperationMatch::default()
                        });
                    }
                }
                let compiled = CompiledRule {
                    id: format!("{pname}/rules[{ri}]"),
                    from,
                    to,
                    when: Vec::new(),
                };
                match policy.action {
                    Action::Allow => out.allow.push(compiled),
                    Action::Deny => out.deny.push(compiled),
                }
            }
        }
        Ok(out)
    }

    /// An authorizer from compiled rules (the Istio document loader builds these).
    pub(crate) fn from_rules(
        deny: Vec<CompiledRule>,
        allow: Vec<CompiledRule>,
        audit: Vec<CompiledRule>,
        has_allow_policy: bool,
        sources: Vec<String>,
    ) -> Self {
        Self {
            deny,
            allow,
            audit,
            has_allow_policy,
            sources,
        }
    }

    /// The policies that apply (`AuthorizationPolicy ns/name`), when built from documents.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Whether any policy applies at all (none: everything is allowed).
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && !self.has_allow_policy && self.audit.is_empty()
    }

    /// Decides one request by principal, method and path (no host, port or header
    /// conditions: see [`decide`](Self::decide)). `principal` is the caller's verified
    /// identity (`None`: plaintext).
    pub fn evaluate(
        &self,
        principal: Option<&SpiffeId>,
        method: &http::Method,
        path: &str,
    ) -> Decision {
        self.decide(&AuthzRequest {
            principal,
            method,
            path,
            host: "",
            port: None,
            headers: None,
        })
    }

    /// Decides one request, in Istio's order: a matching `DENY` denies; with no `ALLOW`
    /// policy the request is allowed; a matching `ALLOW` allows; anything else is denied.
    /// `AUDIT` matches are logged and change nothing. The path is normalized first (Istio's
    /// default `BASE` normalization: `/a/../b` is `/b`).
    pub fn decide(&self, req: &AuthzRequest<'_>) -> Decision {
        let p = req
            .principal
            .map(|id| id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str()));
        let path = normalize_path(req.path);
        let method = req.method;
        let path = path.as_ref();
        if let Some(rule) = self.audit.iter().find(|r| r.matches(req, p, path)) {
            tracing::info!(principal = p.unwrap_or("(plaintext)"), %method, path, rule = %rule.id, "authorization audit");
        }
        let decision = if let Some(rule) = self.deny.iter().find(|r| r.matches(req, p, path)) {
            Decision {
                allowed: false,
                by: rule.id.clone(),
            }
        } else if self.has_allow_policy {
            match self.allow.iter().find(|r| r.matches(req, p, path)) {
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
