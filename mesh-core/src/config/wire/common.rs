//! Messages several Istio resources share: string matches, percentages, destinations, header
//! operations, workload selectors and policy target references.

use std::collections::BTreeMap;

use super::null_as_default;

/// `StringMatch`: how to match a string (oneof; exactly one should be set, checked elsewhere).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    /// Exact, case-sensitive string match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Prefix-based, case-sensitive match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// RE2-style regex match of the whole string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// `Percent`: a percentage in the range 0.0–100.0.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    /// The percentage (a double, e.g. `0.1` for 0.1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `PortSelector`: a port of a destination service, by number.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    /// Valid port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
}

/// `Destination`: the network-addressable service requests are forwarded to, after routing.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Name of a service from the service registry; short names resolve against the rule's
    /// namespace (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Name of a subset of the service, defined by a DestinationRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// Port on the host; needed only when the service exposes several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

/// `Headers`: header manipulation rules for requests and responses.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Headers {
    /// Operations on the request headers before forwarding to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// Operations on the response headers before returning to the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// `Headers.HeaderOperations`: how to modify a set of headers.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite the headers named by the keys with the given values.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub set: BTreeMap<String, String>,
    /// Append the given values to the headers named by the keys.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub add: BTreeMap<String, String>,
    /// Remove the named headers.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remove: Vec<String>,
}

/// `istio.type.v1beta1.WorkloadSelector`: the workloads a policy applies to, by label
/// (`matchLabels`). (ServiceEntry uses a different message, with `labels`:
/// [`ServiceEntryWorkloadSelector`](super::ServiceEntryWorkloadSelector).)
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all have to be selected (within the policy's namespace).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
}

/// `istio.type.v1beta1.PolicyTargetReference`: a resource (Gateway, Service…) a policy is
/// attached to, instead of a workload selector.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`gateway.networking.k8s.io`, or empty for core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target, e.g. `Gateway` or `Service` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name of the target (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace of the target; must be the policy's own (cross-namespace is not allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::super::test_support::spec;
    use super::*;

    #[test]
    fn destination_with_port() {
        let d: Destination =
            spec("host: www.googleapis.com\nsubset: v1\nport:\n  number: 443\n").unwrap();
        assert_eq!(d.host.as_deref(), Some("www.googleapis.com"));
        assert_eq!(d.subset.as_deref(), Some("v1"));
        assert_eq!(d.port, Some(PortSelector { number: Some(443) }));
    }

    #[test]
    fn port_selector_name_is_gone() {
        // `PortSelector.name` is reserved (removed) in Istio's schema.
        let err = spec::<PortSelector>("name: http\n").unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }

    #[test]
    fn string_match_keeps_every_alternative() {
        let m: StringMatch = spec("exact: a\nprefix: b\n").unwrap();
        assert_eq!(m.exact.as_deref(), Some("a"));
        assert_eq!(m.prefix.as_deref(), Some("b"));
        assert_eq!(m.regex, None);
        let err = spec::<StringMatch>("suffix: a\n").unwrap_err();
        assert!(err.to_string().contains("suffix"), "{err}");
    }

    #[test]
    fn header_operations() {
        let h: Headers = spec(
            "request:\n  set: {x-a: '1'}\n  add: {x-b: two}\n  remove: [x-c]\nresponse:\n  remove: [server]\n",
        )
        .unwrap();
        let request = h.request.unwrap();
        assert_eq!(request.set["x-a"], "1");
        assert_eq!(request.add["x-b"], "two");
        assert_eq!(request.remove, ["x-c"]);
        assert_eq!(h.response.unwrap().remove, ["server"]);
    }

    #[test]
    fn selectors_and_target_refs() {
        let s: WorkloadSelector = spec("matchLabels: {app: httpbin}\n").unwrap();
        assert_eq!(s.match_labels["app"], "httpbin");
        let err = spec::<WorkloadSelector>("labels: {app: httpbin}\n").unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
        let t: PolicyTargetReference =
            spec("group: gateway.networking.k8s.io\nkind: Gateway\nname: waypoint\n").unwrap();
        assert_eq!(t.kind.as_deref(), Some("Gateway"));
    }

    #[test]
    fn percent_accepts_integers_and_doubles() {
        assert_eq!(spec::<Percent>("value: 100\n").unwrap().value, Some(100.0));
        assert_eq!(spec::<Percent>("value: 0.1\n").unwrap().value, Some(0.1));
    }
}
