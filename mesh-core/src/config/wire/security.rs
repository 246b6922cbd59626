//! `AuthorizationPolicy` and `PeerAuthentication` (`security.istio.io`): access control and
//! mutual TLS (`security/v1beta1/authorization_policy.proto`, `peer_authentication.proto`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::null_as_default;
use super::{PolicyTargetReference, WorkloadSelector};

/// `AuthorizationPolicy` spec: access control on workloads.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to, by label; absent means all in the namespace (all in
    /// the mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Resource (Gateway, Service…) the policy is attached to (exclusive with `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources the policy is attached to (exclusive with `selector` and `targetRef`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules a request is matched against (ORed); absent never matches (an ALLOW policy
    /// without rules allows nothing), an empty rule always matches.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub rules: Vec<Rule>,
    /// `ALLOW` (default), `DENY`, `AUDIT` or `CUSTOM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The external authorizer of a `CUSTOM` policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

/// `AuthorizationPolicy.ExtensionProvider`: an extension provider from the mesh config.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// Name of the provider, as the mesh config defines it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `Rule`: matches a request when (any `from`) and (any `to`) and (all `when`) match; absent
/// parts match everything.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Sources of the request (ORed).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from: Vec<RuleFrom>,
    /// Operations of the request (ORed).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub to: Vec<RuleTo>,
    /// Further conditions on request attributes (ANDed).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub when: Vec<Condition>,
}

/// `Rule.From`: one source of a rule.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// The source's attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// `Rule.To`: one operation of a rule.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// The operation's attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// `Source`: the peer identity and origin of a request; fields AND, values within a field OR.
/// Strings match exactly, by `abc*` prefix, `*abc` suffix, or `*` (any non-empty).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities (mTLS), `<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub principals: Vec<String>,
    /// Negative match of peer identities.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_principals: Vec<String>,
    /// Request identities (JWT), `<iss>/<sub>`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_principals: Vec<String>,
    /// Negative match of request identities.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity (mTLS).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub namespaces: Vec<String>,
    /// Negative match of namespaces.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_namespaces: Vec<String>,
    /// Service accounts of the peer, `<namespace>/<service-account>` (not with `principals`
    /// or `namespaces`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub service_accounts: Vec<String>,
    /// Negative match of service accounts.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_service_accounts: Vec<String>,
    /// Peer IP addresses or CIDR blocks (the connection's source).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_blocks: Vec<String>,
    /// Negative match of peer IP blocks.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_ip_blocks: Vec<String>,
    /// Original client IP addresses or CIDR blocks (`X-Forwarded-For`, proxy protocol).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remote_ip_blocks: Vec<String>,
    /// Negative match of remote IP blocks.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_remote_ip_blocks: Vec<String>,
    /// Trust domains of the peer identity.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trust_domains: Vec<String>,
    /// Negative match of trust domains.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_trust_domains: Vec<String>,
}

/// `Operation`: what a request does; fields AND, values within a field OR.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// Hosts (`Host`/`:authority`), matched case-insensitively.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hosts: Vec<String>,
    /// Negative match of hosts.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_hosts: Vec<String>,
    /// Destination ports of the connection (as strings).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<String>,
    /// Negative match of ports.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_ports: Vec<String>,
    /// HTTP methods (gRPC: always `POST`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub methods: Vec<String>,
    /// Negative match of methods.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_methods: Vec<String>,
    /// Normalized paths (gRPC: `/package.Service/Method`); `{*}` / `{**}` templates allowed.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub paths: Vec<String>,
    /// Negative match of paths.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_paths: Vec<String>,
}

/// `Condition`: a condition on a request attribute (`request.headers[…]`, `source.ip`,
/// `request.auth.claims[…]`…).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// Name of the attribute (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Values the attribute may have (ORed).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
    /// Values the attribute must not have.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_values: Vec<String>,
}

/// `PeerAuthentication` spec: the mutual TLS mode of workloads' inbound traffic.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Workloads the policy applies to, by label; absent means the whole namespace (the
    /// whole mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Mutual TLS mode for all ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
    /// Mutual TLS mode per workload port (only with a `selector`). Keys are port numbers, kept
    /// as written (`8080:` in YAML is an integer key, `"8080"` in JSON a string: both accepted).
    #[serde(
        default,
        deserialize_with = "port_keyed_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub port_level_mtls: BTreeMap<String, PeerMtls>,
}

/// `PeerAuthentication.MutualTLS`: a mutual TLS mode.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    /// `UNSET` (inherit from the parent scope; PERMISSIVE at the top), `DISABLE`,
    /// `PERMISSIVE` or `STRICT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A map key that is a port number, written as an integer or a string; kept as a string.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey(String);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortKeyVisitor;

        impl Visitor<'_> for PortKeyVisitor {
            type Value = PortKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (integer or string)")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortKey, E> {
                Ok(PortKey(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortKey, E> {
                Ok(PortKey(v.to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortKey, E> {
                Ok(PortKey(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<PortKey, E> {
                Ok(PortKey(v))
            }
        }

        deserializer.deserialize_any(PortKeyVisitor)
    }
}

/// Deserializes a map keyed by port numbers (integer or string keys) into string keys; `null`
/// gives an empty map.
fn port_keyed_map<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    let map = Option::<BTreeMap<PortKey, V>>::deserialize(deserializer)?.unwrap_or_default();
    Ok(map.into_iter().map(|(key, value)| (key.0, value)).collect())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{documents, spec};
    use super::*;

    #[test]
    fn authorization_policy_from_to_when() {
        // Istio's AuthorizationPolicy reference example (the first one).
        let yaml = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
"#;
        let (header, ap) = documents::<AuthorizationPolicySpec>(yaml).remove(0);
        assert_eq!(header.metadata.namespace.as_deref(), Some("foo"));
        assert_eq!(ap.action.as_deref(), Some("ALLOW"));
        let rule = &ap.rules[0];
        assert_eq!(
            rule.from[0].source.as_ref().unwrap().principals,
            ["cluster.local/ns/default/sa/sleep"]
        );
        assert_eq!(rule.from[1].source.as_ref().unwrap().namespaces, ["test"]);
        let op = rule.to[1].operation.as_ref().unwrap();
        assert_eq!(
            (op.methods.as_slice(), op.paths.as_slice()),
            (&["POST".to_string()][..], &["/data".to_string()][..])
        );
        assert_eq!(
            rule.when[0].key.as_deref(),
            Some("request.auth.claims[iss]")
        );
        assert_eq!(rule.when[0].values, ["https://accounts.google.com"]);
    }

    #[test]
    fn allow_nothing_and_allow_all() {
        let (_, nothing) = documents::<AuthorizationPolicySpec>(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n name: allow-nothing\n namespace: foo\nspec:\n  {}\n",
        )
        .remove(0);
        assert_eq!(nothing, AuthorizationPolicySpec::default());
        assert!(nothing.rules.is_empty());
        let all: AuthorizationPolicySpec = spec("rules:\n- {}\n").unwrap();
        assert_eq!(all.rules, [Rule::default()]);
    }

    #[test]
    fn every_source_operation_and_policy_field() {
        let yaml = r#"
selector: {matchLabels: {app: httpbin}}
targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}
targetRefs: [{kind: Service, name: httpbin, namespace: foo}]
action: CUSTOM
provider: {name: ext-authz}
rules:
- from:
  - source:
      principals: [a]
      notPrincipals: [b]
      requestPrincipals: ["iss/sub"]
      notRequestPrincipals: ["*"]
      namespaces: [ns1]
      notNamespaces: [ns2]
      serviceAccounts: [ns1/sa]
      notServiceAccounts: [ns2/sa]
      ipBlocks: [10.0.0.0/8]
      notIpBlocks: [10.1.0.0/16]
      remoteIpBlocks: [1.2.3.4]
      notRemoteIpBlocks: [5.6.7.8/32]
      trustDomains: [cluster.local]
      notTrustDomains: [other.local]
  to:
  - operation:
      hosts: [a.example]
      notHosts: [b.example]
      ports: ["8080"]
      notPorts: ["9090"]
      methods: [GET]
      notMethods: [DELETE]
      paths: ["/api/{*}/x"]
      notPaths: ["/admin*"]
  when:
  - key: request.headers[x-token]
    notValues: [bad]
"#;
        let ap: AuthorizationPolicySpec = spec(yaml).unwrap();
        assert_eq!(ap.selector.unwrap().match_labels["app"], "httpbin");
        assert_eq!(ap.target_ref.unwrap().kind.as_deref(), Some("Gateway"));
        assert_eq!(ap.target_refs[0].namespace.as_deref(), Some("foo"));
        assert_eq!(ap.provider.unwrap().name.as_deref(), Some("ext-authz"));
        let source = ap.rules[0].from[0].source.clone().unwrap();
        assert_eq!(source.not_remote_ip_blocks, ["5.6.7.8/32"]);
        assert_eq!(source.not_ip_blocks, ["10.1.0.0/16"]);
        assert_eq!(source.not_trust_domains, ["other.local"]);
        let op = ap.rules[0].to[0].operation.clone().unwrap();
        assert_eq!(op.not_ports, ["9090"]);
        assert_eq!(ap.rules[0].when[0].not_values, ["bad"]);
    }

    #[test]
    fn authorization_typos_are_rejected() {
        for (yaml, field) in [
            (
                "rules: [{from: [{source: {principal: [a]}}]}]\n",
                "principal",
            ),
            ("rules: [{to: [{operation: {path: [/a]}}]}]\n", "path"),
            ("rules: [{when: [{key: a, value: [b]}]}]\n", "value"),
            ("rules: [{from: [{principals: [a]}]}]\n", "principals"),
            ("selector: {labels: {app: a}}\n", "labels"),
        ] {
            let err = spec::<AuthorizationPolicySpec>(yaml).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn peer_authentication_strict_with_port_level() {
        // Istio's PeerAuthentication reference example.
        let yaml = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
";
        let (header, pa) = documents::<PeerAuthenticationSpec>(yaml).remove(0);
        assert_eq!(header.kind, "PeerAuthentication");
        assert_eq!(pa.selector.unwrap().match_labels["app"], "finance");
        assert_eq!(pa.mtls.unwrap().mode.as_deref(), Some("STRICT"));
        assert_eq!(pa.port_level_mtls.len(), 1);
        assert_eq!(pa.port_level_mtls["8080"].mode.as_deref(), Some("DISABLE"));
    }

    #[test]
    fn port_keys_integer_or_string() {
        // Through serde_json::Value (keys are strings there) …
        let pa: PeerAuthenticationSpec =
            spec("portLevelMtls:\n  8080: {mode: DISABLE}\n  \"9090\": {mode: STRICT}\n").unwrap();
        assert_eq!(pa.port_level_mtls["8080"].mode.as_deref(), Some("DISABLE"));
        assert_eq!(pa.port_level_mtls["9090"].mode.as_deref(), Some("STRICT"));
        // … and straight from YAML, where `8080:` is an integer key.
        let pa: PeerAuthenticationSpec = serde_saphyr::from_str(
            "portLevelMtls:\n  8080: {mode: DISABLE}\n  \"9090\": {mode: STRICT}\n",
        )
        .unwrap();
        assert_eq!(pa.port_level_mtls["8080"].mode.as_deref(), Some("DISABLE"));
        assert_eq!(pa.port_level_mtls["9090"].mode.as_deref(), Some("STRICT"));
        let pa: PeerAuthenticationSpec =
            serde_json::from_str(r#"{"portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}"#).unwrap();
        assert_eq!(
            pa.port_level_mtls["8080"].mode.as_deref(),
            Some("PERMISSIVE")
        );
        // null is no map; a non-port key is kept for the converter to reject.
        assert!(
            spec::<PeerAuthenticationSpec>("portLevelMtls:\n")
                .unwrap()
                .port_level_mtls
                .is_empty()
        );
        let pa: PeerAuthenticationSpec = spec("portLevelMtls: {http: {mode: STRICT}}\n").unwrap();
        assert!(pa.port_level_mtls.contains_key("http"));
        // Typos inside a port entry are still rejected.
        let err =
            spec::<PeerAuthenticationSpec>("portLevelMtls: {8080: {mod: STRICT}}\n").unwrap_err();
        assert!(err.to_string().contains("mod"), "{err}");
        // Serializes with string keys, as Istio's JSON.
        let json = serde_json::to_value(&pa).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"portLevelMtls": {"http": {"mode": "STRICT"}}})
        );
    }

    #[test]
    fn peer_authentication_typo() {
        let err = spec::<PeerAuthenticationSpec>("mtls: {mode: STRICT}\nportLevelMTLS: {}\n")
            .unwrap_err();
        assert!(err.to_string().contains("portLevelMTLS"), "{err}");
    }
}
