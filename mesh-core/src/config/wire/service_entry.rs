//! `ServiceEntry` and `WorkloadEntry` (`networking.istio.io`): services and workloads added to
//! the mesh's registry by hand (`networking/v1alpha3/service_entry.proto`,
//! `workload_entry.proto`).

use std::collections::BTreeMap;

use super::null_as_default;

/// `ServiceEntry` spec: a service (usually outside the platform's registry) and its endpoints.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service (required; taken literally, never expanded; wildcard prefix
    /// allowed, `*` alone not).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hosts: Vec<String>,
    /// Virtual IP addresses or CIDR blocks of the service.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// How endpoints are found: `NONE` (default), `STATIC`, `DNS`, `DNS_ROUND_ROBIN`,
    /// `DYNAMIC_DNS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// Endpoints of the service (exclusive with `workloadSelector`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub endpoints: Vec<WorkloadEntry>,
    /// Pods and WorkloadEntries selected as endpoints, by label (MESH_INTERNAL only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<ServiceEntryWorkloadSelector>,
    /// Namespaces the service is exported to (`.` own, `*` all); empty means all.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub export_to: Vec<String>,
    /// Identities (SANs) the service's certificates may present.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subject_alt_names: Vec<String>,
}

/// `ServicePort`: a port of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number (required; unique in the entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// Protocol: `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP` or `TLS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Name of the port (required); endpoints' `ports` maps are keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port on the endpoints traffic is sent to; default: `number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

/// `istio.networking.v1alpha3.WorkloadSelector` (defined in `sidecar.proto`): workloads
/// selected by label, with the field `labels` — unlike the security policies'
/// [`WorkloadSelector`](super::WorkloadSelector), whose field is `matchLabels`.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryWorkloadSelector {
    /// Labels a workload must all have to be selected (within the entry's namespace).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
}

/// `WorkloadEntry`: one non-Kubernetes workload (VM, bare metal), either an endpoint of a
/// ServiceEntry or the spec of a `WorkloadEntry` resource.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// Address of the endpoint: IP, DNS name (DNS resolution) or `unix:///path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Endpoint ports, keyed by the service's port name; they beat `targetPort`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub ports: BTreeMap<String, u32>,
    /// Labels of the endpoint.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint is in (endpoints in the same network are reachable directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Locality of the endpoint, `region/zone/subzone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// Load balancing weight of the endpoint; higher gets more traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Service account of the workload (in the entry's namespace), for its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// The spec of a `WorkloadEntry` resource: the same message as a ServiceEntry endpoint.
pub type WorkloadEntrySpec = WorkloadEntry;

#[cfg(test)]
mod tests {
    use super::super::test_support::{documents, spec};
    use super::*;

    #[test]
    fn static_endpoints() {
        // Istio's ServiceEntry reference example `external-svc-mongocluster`.
        let yaml = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-mongocluster
spec:
  hosts:
  - mymongodb.somedomain # not used
  addresses:
  - 192.192.192.192/24 # VIPs
  ports:
  - number: 27018
    name: mongodb
    protocol: MONGO
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
";
        let (header, se) = documents::<ServiceEntrySpec>(yaml).remove(0);
        assert_eq!(header.kind, "ServiceEntry");
        assert_eq!(se.hosts, ["mymongodb.somedomain"]);
        assert_eq!(se.addresses, ["192.192.192.192/24"]);
        assert_eq!(
            se.ports,
            [ServicePort {
                number: Some(27018),
                protocol: Some("MONGO".into()),
                name: Some("mongodb".into()),
                target_port: None,
            }]
        );
        assert_eq!(se.location.as_deref(), Some("MESH_INTERNAL"));
        assert_eq!(se.resolution.as_deref(), Some("STATIC"));
        let addresses: Vec<_> = se.endpoints.iter().map(|e| e.address.as_deref()).collect();
        assert_eq!(addresses, [Some("2.2.2.2"), Some("3.3.3.3")]);
    }

    #[test]
    fn dns_without_and_with_endpoints() {
        // `samples/bookinfo/networking/egress-rule-google-apis.yaml` (its ServiceEntry).
        let se: ServiceEntrySpec = spec(
            "hosts:
- www.googleapis.com
ports:
- number: 80
  name: http
  protocol: HTTP
- number: 443
  name: https
  protocol: HTTPS
resolution: DNS
",
        )
        .unwrap();
        assert_eq!(se.resolution.as_deref(), Some("DNS"));
        assert!(se.endpoints.is_empty());
        assert_eq!(se.ports[1].number, Some(443));

        // Istio's reference example `external-svc-dns`.
        let se: ServiceEntrySpec = spec(
            "hosts:
- foo.bar.com
location: MESH_EXTERNAL
ports:
- number: 80
  name: http
  protocol: HTTP
resolution: DNS
endpoints:
- address: us.foo.bar.com
  ports:
    http: 8080
- address: uk.foo.bar.com
  ports:
    http: 9080
- address: in.foo.bar.com
  ports:
    http: 7080
",
        )
        .unwrap();
        assert_eq!(se.endpoints.len(), 3);
        assert_eq!(se.endpoints[1].address.as_deref(), Some("uk.foo.bar.com"));
        assert_eq!(se.endpoints[1].ports["http"], 9080);
    }

    #[test]
    fn workload_selector_san_and_endpoint_fields() {
        let se: ServiceEntrySpec = spec(
            r#"hosts: [details.bookinfo.com]
location: MESH_INTERNAL
ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
resolution: STATIC
workloadSelector:
  labels:
    app: details
exportTo: ["."]
subjectAltNames: ["spiffe://cluster.local/ns/httpbin-ns/sa/httpbin-service-account"]
"#,
        )
        .unwrap();
        assert_eq!(se.workload_selector.unwrap().labels["app"], "details");
        assert_eq!(se.ports[0].target_port, Some(9080));
        assert_eq!(se.subject_alt_names.len(), 1);
        // The security policies' `matchLabels` is not this message's field.
        let err =
            spec::<ServiceEntrySpec>("hosts: [a]\nworkloadSelector: {matchLabels: {app: a}}\n")
                .unwrap_err();
        assert!(err.to_string().contains("matchLabels"), "{err}");

        let we: WorkloadEntrySpec = spec(
            "address: unix:///var/run/example/socket\nports: {http: 8080}\nlabels: {app: details, instance-id: vm1}\nnetwork: vpc1\nlocality: us-west1/zone1\nweight: 3\nserviceAccount: details\n",
        )
        .unwrap();
        assert_eq!(we.service_account.as_deref(), Some("details"));
        assert_eq!(we.weight, Some(3));
        assert_eq!(we.locality.as_deref(), Some("us-west1/zone1"));
        assert_eq!(we.labels["instance-id"], "vm1");
    }

    #[test]
    fn typos_are_rejected() {
        for (yaml, field) in [
            ("hosts: [a]\nresoluton: DNS\n", "resoluton"),
            (
                "hosts: [a]\nports: [{number: 80, name: http, target_port: 8080}]\n",
                "target_port",
            ),
            ("hosts: [a]\nendpoints: [{adress: 1.2.3.4}]\n", "adress"),
        ] {
            let err = spec::<ServiceEntrySpec>(yaml).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }
}
