//! AuthorizationPolicy and PeerAuthentication → what the server layers enforce.

use std::collections::BTreeMap;

use http::HeaderName;

use super::{
    Ctx,
    common::{nth, sub},
};
use crate::{
    authz::{
        Authorizer, CompiledRule, Condition, ConditionKey, OperationMatch, Pattern, SourceMatch,
        Values,
    },
    config::{Workload, host::ROOT_NAMESPACE, wire},
    tls::ServerTlsMode,
};

/// What an AuthorizationPolicy does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthzAction {
    /// `ALLOW`.
    Allow,
    /// `DENY`.
    Deny,
    /// `AUDIT`: logged, no effect on the decision.
    Audit,
}

/// A validated AuthorizationPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// Its namespace (the root namespace's apply mesh-wide).
    pub namespace: String,
    /// `selector.matchLabels` (`None`: every workload of the namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// The action.
    pub action: AuthzAction,
    /// `AuthorizationPolicy ns/name`.
    pub source: String,
    pub(crate) rules: Vec<CompiledRule>,
}

impl AuthzPolicy {
    /// Whether it applies to `w`.
    pub fn applies_to(&self, w: &Workload) -> bool {
        (self.namespace == ROOT_NAMESPACE || self.namespace == w.naming.namespace)
            && self
                .selector
                .as_ref()
                .is_none_or(|sel| sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    }
}

/// The authorizer of workload `w` from every policy that applies to it.
pub fn authorizer_for(policies: &[AuthzPolicy], w: &Workload) -> Authorizer {
    let (mut deny, mut allow, mut audit, mut has_allow, mut sources) =
        (Vec::new(), Vec::new(), Vec::new(), false, Vec::new());
    for p in policies.iter().filter(|p| p.applies_to(w)) {
        sources.push(p.source.clone());
        match p.action {
            AuthzAction::Allow => {
                has_allow = true;
                allow.extend(p.rules.iter().cloned());
            }
            AuthzAction::Deny => deny.extend(p.rules.iter().cloned()),
            AuthzAction::Audit => audit.extend(p.rules.iter().cloned()),
        }
    }
    Authorizer::from_rules(deny, allow, audit, has_allow, sources)
}

pub(crate) fn authorization(
    cx: &mut Ctx<'_>,
    spec: &wire::AuthorizationPolicySpec,
) -> Option<AuthzPolicy> {
    let before = cx.p.error_count();
    let action = match spec.action.as_deref().unwrap_or("ALLOW") {
        "ALLOW" => AuthzAction::Allow,
        "DENY" => AuthzAction::Deny,
        "AUDIT" => AuthzAction::Audit,
        "CUSTOM" => {
            cx.p.unimplemented("spec.action", "the CUSTOM action (external authorizers)");
            return None;
        }
        other => {
            cx.p.error(
                "spec.action",
                format!("{other:?} is not one of ALLOW, DENY, AUDIT, CUSTOM"),
            );
            return None;
        }
    };
    if spec.provider.is_some() {
        cx.p.unimplemented("spec.provider", "provider (CUSTOM action)");
    }
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        cx.p.unimplemented("spec.targetRef", "targetRef / targetRefs (use selector)");
    }
    if spec.rules.is_empty() && action != AuthzAction::Allow {
        cx.p.error("spec.rules", "a DENY or AUDIT policy needs rules");
    }
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        let at = nth("spec", "rules", i);
        let mut from = Vec::new();
        for (k, f) in r.from.iter().enumerate() {
            let Some(s) = &f.source else {
                cx.p.error(format!("{at}.from[{k}].source"), "source is required");
                continue;
            };
            from.push(source(cx, &format!("{at}.from[{k}].source"), s));
        }
        let mut to = Vec::new();
        for (k, t) in r.to.iter().enumerate() {
            let Some(o) = &t.operation else {
                cx.p.error(format!("{at}.to[{k}].operation"), "operation is required");
                continue;
            };
            to.push(operation(cx, &format!("{at}.to[{k}].operation"), o));
        }
        let mut when = Vec::new();
        for (k, c) in r.when.iter().enumerate() {
            if let Some(c) = condition(cx, &nth(&at, "when", k), c) {
                when.push(c);
            }
        }
        rules.push(CompiledRule {
            id: format!("{}/rules[{i}]", cx.document),
            from,
            to,
            when,
        });
    }
    (cx.p.error_count() == before).then(|| AuthzPolicy {
        namespace: cx.ns.to_owned(),
        selector: spec.selector.as_ref().map(|s| s.match_labels.clone()),
        action,
        source: cx.document.to_owned(),
        rules,
    })
}

fn values(
    cx: &mut Ctx<'_>,
    at: &str,
    field: &str,
    any: &[String],
    not: &[String],
    suffix: bool,
) -> Values {
    let mut out = Values::default();
    for (list, dst, name) in [
        (any, &mut out.any, field.to_owned()),
        (not, &mut out.not, not_name(field)),
    ] {
        for (i, v) in list.iter().enumerate() {
            match Pattern::parse(v.strip_prefix("spiffe://").unwrap_or(v), suffix) {
                Ok(p) => dst.push(p),
                Err(e) => cx.p.error(format!("{at}.{name}[{i}]"), e),
            }
        }
    }
    out
}

fn not_name(field: &str) -> String {
    let mut c = field.chars();
    match c.next() {
        Some(f) => format!("not{}{}", f.to_ascii_uppercase(), c.as_str()),
        None => "not".into(),
    }
}

fn source(cx: &mut Ctx<'_>, at: &str, s: &wire::Source) -> SourceMatch {
    for (field, set) in [
        (
            "requestPrincipals",
            !s.request_principals.is_empty() || !s.not_request_principals.is_empty(),
        ),
        (
            "ipBlocks",
            !s.ip_blocks.is_empty() || !s.not_ip_blocks.is_empty(),
        ),
        (
            "remoteIpBlocks",
            !s.remote_ip_blocks.is_empty() || !s.not_remote_ip_blocks.is_empty(),
        ),
    ] {
        if set {
            cx.p.unimplemented(format!("{at}.{field}"), field);
        }
    }
    if (!s.service_accounts.is_empty() || !s.not_service_accounts.is_empty())
        && (!s.principals.is_empty() || !s.namespaces.is_empty())
    {
        cx.p.error(
            at,
            "serviceAccounts cannot be combined with principals or namespaces",
        );
    }
    SourceMatch {
        principals: values(cx, at, "principals", &s.principals, &s.not_principals, true),
        namespaces: values(cx, at, "namespaces", &s.namespaces, &s.not_namespaces, true),
        service_accounts: values(
            cx,
            at,
            "serviceAccounts",
            &s.service_accounts,
            &s.not_service_accounts,
            true,
        ),
        trust_domains: values(
            cx,
            at,
            "trustDomains",
            &s.trust_domains,
            &s.not_trust_domains,
            true,
        ),
    }
}

fn operation(cx: &mut Ctx<'_>, at: &str, o: &wire::Operation) -> OperationMatch {
    for (i, p) in o.paths.iter().chain(&o.not_paths).enumerate() {
        if p.contains('{') {
            cx.p.unimplemented(nth(at, "paths", i), "path templates ({*}, {**})");
        }
    }
    for (i, p) in o.ports.iter().chain(&o.not_ports).enumerate() {
        if !p.parse::<u16>().is_ok_and(|n| n > 0) {
            cx.p.error(nth(at, "ports", i), format!("{p:?} is not a port number"));
        }
    }
    for (i, m) in o.methods.iter().chain(&o.not_methods).enumerate() {
        if http::Method::from_bytes(m.as_bytes()).is_err() {
            cx.p.error(
                nth(at, "methods", i),
                format!("{m:?} is not an HTTP method"),
            );
        }
    }
    OperationMatch {
        hosts: values(cx, at, "hosts", &o.hosts, &o.not_hosts, true),
        ports: values(cx, at, "ports", &o.ports, &o.not_ports, false),
        methods: values(cx, at, "methods", &o.methods, &o.not_methods, true),
        paths: values(cx, at, "paths", &o.paths, &o.not_paths, true),
    }
}

fn condition(cx: &mut Ctx<'_>, at: &str, c: &wire::Condition) -> Option<Condition> {
    let Some(key) = c.key.as_deref() else {
        cx.p.error(sub(at, "key"), "key is required");
        return None;
    };
    if c.values.is_empty() && c.not_values.is_empty() {
        cx.p.error(at, "a condition needs values or notValues");
        return None;
    }
    let k = if let Some(h) = key
        .strip_prefix("request.headers[")
        .and_then(|h| h.strip_suffix(']'))
    {
        match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
            Ok(n) => ConditionKey::Header(n),
            Err(_) => {
                cx.p.error(sub(at, "key"), format!("{h:?} is not a header name"));
                return None;
            }
        }
    } else {
        match key {
            "source.principal" => ConditionKey::SourcePrincipal,
            "source.namespace" => ConditionKey::SourceNamespace,
            "destination.port" => ConditionKey::DestinationPort,
            k if k.starts_with("request.auth.")
                || matches!(
                    k,
                    "source.ip" | "remote.ip" | "destination.ip" | "connection.sni"
                )
                || k.starts_with("experimental.") =>
            {
                cx.p.unimplemented(sub(at, "key"), &format!("condition key {k:?}"));
                return None;
            }
            other => {
                cx.p.error(
                    sub(at, "key"),
                    format!("{other:?} is not a condition key Istio knows"),
                );
                return None;
            }
        }
    };
    Some(Condition {
        key: k,
        values: values(cx, at, "values", &c.values, &c.not_values, true),
    })
}

/// A validated PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthn {
    /// Its namespace (the root namespace's, without selector, is mesh-wide).
    pub namespace: String,
    /// `selector.matchLabels`.
    pub selector: Option<BTreeMap<String, String>>,
    /// `mtls.mode`; `None`: `UNSET` (inherit).
    pub mode: Option<ServerTlsMode>,
    /// `portLevelMtls`.
    pub ports: Vec<(u16, Option<ServerTlsMode>)>,
    /// `PeerAuthentication ns/name`.
    pub source: String,
}

/// The mTLS mode of workload `w` on `port`: the most specific policy (workload selector, then
/// namespace, then mesh-wide in the root namespace) that sets one; `PERMISSIVE` when none does
/// (Istio's default).
pub fn peer_mode_for(policies: &[PeerAuthn], w: &Workload, port: u16) -> ServerTlsMode {
    let selects = |p: &&PeerAuthn| {
        p.selector
            .as_ref()
            .is_some_and(|sel| sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
    };
    let ns = &w.naming.namespace;
    let workload = policies.iter().filter(|p| &p.namespace == ns).find(selects);
    let namespace = policies
        .iter()
        .find(|p| &p.namespace == ns && p.selector.is_none());
    let mesh = policies
        .iter()
        .find(|p| p.namespace == ROOT_NAMESPACE && p.selector.is_none());
    if let Some(p) = workload {
        if let Some((_, Some(m))) = p.ports.iter().find(|(n, _)| *n == port) {
            return *m;
        }
        if let Some(m) = p.mode {
            return m;
        }
    }
    namespace
        .and_then(|p| p.mode)
        .or_else(|| mesh.and_then(|p| p.mode))
        .unwrap_or(ServerTlsMode::Permissive)
}

fn mode(cx: &mut Ctx<'_>, at: &str, m: &Option<wire::PeerMtls>) -> Option<ServerTlsMode> {
    match m
        .as_ref()
        .and_then(|m| m.mode.as_deref())
        .unwrap_or("UNSET")
    {
        "UNSET" => None,
        "STRICT" => Some(ServerTlsMode::Strict),
        "PERMISSIVE" => Some(ServerTlsMode::Permissive),
        "DISABLE" => Some(ServerTlsMode::Disable),
        other => {
            cx.p.error(
                sub(at, "mode"),
                format!("{other:?} is not one of UNSET, DISABLE, PERMISSIVE, STRICT"),
            );
            None
        }
    }
}

pub(crate) fn peer_authentication(
    cx: &mut Ctx<'_>,
    spec: &wire::PeerAuthenticationSpec,
) -> Option<PeerAuthn> {
    let before = cx.p.error_count();
    let m = mode(cx, "spec.mtls", &spec.mtls);
    if !spec.port_level_mtls.is_empty() && spec.selector.is_none() {
        cx.p.error("spec.portLevelMtls", "portLevelMtls requires selector (mesh and namespace policies cannot have port-level mTLS)");
    }
    if spec.selector.is_some() && cx.ns == ROOT_NAMESPACE {
        cx.p.warn(
            "spec.selector",
            "Istio ignores selector policies in the root namespace",
        );
    }
    let mut ports = Vec::new();
    for (k, v) in &spec.port_level_mtls {
        let at = format!("spec.portLevelMtls[{k:?}]");
        match k.parse::<u16>() {
            Ok(n) if n > 0 => {
                let pm = mode(cx, &at, &Some(v.clone()));
                ports.push((n, pm));
            }
            _ => {
                cx.p.error(&at, format!("{k:?} is not a port number (1 to 65535)"))
            }
        }
    }
    (cx.p.error_count() == before).then(|| PeerAuthn {
        namespace: cx.ns.to_owned(),
        selector: spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .filter(|_| cx.ns != ROOT_NAMESPACE),
        mode: m,
        ports,
        source: cx.document.to_owned(),
    })
}
