//! Istio's resource documents as serde types: the *wire* form of the configuration.
//!
//! These types are Istio's schema (`istio/api`: `networking/v1alpha3/*.proto`,
//! `security/v1beta1/*.proto`, `type/v1beta1/selector.proto`, and the CRD schema
//! `kubernetes/customresourcedefinitions.gen.yaml`, mid-2026) written down as serde structs, so
//! that documents written as Istio's documentation and samples write them parse unchanged. They
//! are pure data: nothing here validates, defaults or interprets a value; the conversion into
//! mesh's validated policy types lives elsewhere and relies on these conventions:
//!
//! - **Every field is optional.** A singular field is an `Option` (absent ≠ present with its
//!   default value), a repeated field a `Vec`, a map a `BTreeMap<String, _>`; absent (or `null`,
//!   which Kubernetes prunes like an absent field) gives `None` / empty.
//! - **Names are Istio's JSON names** (camelCase, as the CRD schema and `kubectl` accept them);
//!   the Rust field is the snake_case of that name. Where Istio's JSON name is not the plain
//!   camelCase of the Rust name, a `#[serde(rename)]` says so (`match`, `consecutive5xxErrors`,
//!   the CRD's extra `mirror_percent`).
//! - **Unknown fields are rejected** (`deny_unknown_fields`), as the Kubernetes API server's strict
//!   field validation rejects them: a typo (`weigth`, `perTryTimout`) is an error naming the field.
//!   Every field of the current schema is present, deprecated ones included, so that "a field
//!   Istio has but mesh does not implement" (reported by the converter) is told apart from "a
//!   field Istio does not have" (rejected here).
//! - **Enums are strings** (`ROUND_ROBIN`, `ISTIO_MUTUAL`, `STRICT`…) and **durations are Go
//!   duration strings** (`1.5s`, `100ms`): the converter checks them and lists allowed values.
//! - `oneof`s are structs with every alternative as an `Option` (the converter rejects two set).
//!
//! | module | resource `spec` |
//! |---|---|
//! | [`virtual_service`] | `VirtualService` ([`VirtualServiceSpec`]) |
//! | [`destination_rule`] | `DestinationRule` ([`DestinationRuleSpec`]) |
//! | [`service_entry`] | `ServiceEntry` ([`ServiceEntrySpec`]), `WorkloadEntry` ([`WorkloadEntry`]) |
//! | [`security`] | `AuthorizationPolicy` ([`AuthorizationPolicySpec`]), `PeerAuthentication` ([`PeerAuthenticationSpec`]) |
//! | [`common`] | messages shared by several resources ([`StringMatch`], [`Destination`], [`WorkloadSelector`]…) |
//!
//! A document is read in two steps: [`DocumentHeader`] (`apiVersion`, `kind`, `metadata`) says
//! what it is, then its `spec` is deserialized into the matching type.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

pub mod common;
pub mod destination_rule;
pub mod security;
pub mod service_entry;
pub mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use security::*;
pub use service_entry::*;
pub use virtual_service::*;

/// The header every Istio resource document has: what the document is and its Kubernetes
/// metadata. Other top-level keys (`spec`, `status`) are ignored here; `spec` is read separately.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocumentHeader {
    /// API group and version, e.g. `networking.istio.io/v1` or `security.istio.io/v1beta1`.
    pub api_version: String,
    /// Resource kind, e.g. `VirtualService`.
    pub kind: String,
    /// Kubernetes object metadata (name, namespace, labels…); empty when absent.
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: ObjectMeta,
}

/// Kubernetes `ObjectMeta`, as `kubectl get -o yaml` writes it. Only `name`, `namespace`,
/// `labels` and `annotations` mean anything to mesh; the server-set fields are accepted so that a
/// document exported from a cluster loads unchanged.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Name of the object, unique within its namespace and kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Prefix the server uses to generate a unique name when `name` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// Namespace of the object; short host names in the spec resolve against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Deprecated server-set URL of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    /// Server-set unique id of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Server-set opaque version of the object, for optimistic concurrency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Server-set sequence number of the desired state (the spec's version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Server-set creation time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Server-set time at which the object will be deleted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    /// Seconds allowed for graceful termination before the object is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Labels of the object.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the object.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// Objects this one depends on (kept as written).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub owner_references: Vec<serde_json::Value>,
    /// Finalizers that must run before the object is deleted.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub finalizers: Vec<String>,
    /// Server-side apply field ownership records (kept as written).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub managed_fields: Vec<serde_json::Value>,
}

/// Deserializes `null` as the type's default (an empty list or map), as the Kubernetes API
/// server prunes a `null` field of a structural schema like an absent one.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! YAML → `serde_json::Value` → typed spec, as the loader feeds the wire types.

    use serde::de::DeserializeOwned;

    /// Parses YAML into a JSON value (panics on invalid YAML: test input is fixed).
    pub(crate) fn value(yaml: &str) -> serde_json::Value {
        serde_saphyr::from_str::<serde_json::Value>(yaml).expect("test YAML parses")
    }

    /// Deserializes a spec written as YAML.
    pub(crate) fn spec<T: DeserializeOwned>(yaml: &str) -> Result<T, serde_json::Error> {
        serde_json::from_value(value(yaml))
    }

    /// Splits a multi-document YAML text (`---`) and returns each document's header and `spec`.
    pub(crate) fn documents<T: DeserializeOwned>(yaml: &str) -> Vec<(super::DocumentHeader, T)> {
        yaml.split("\n---")
            .filter(|doc| !doc.trim().trim_start_matches("---").trim().is_empty())
            .map(|doc| {
                let mut value = value(doc);
                let header: super::DocumentHeader =
                    serde_json::from_value(value.clone()).expect("document header parses");
                let spec = value
                    .get_mut("spec")
                    .map(serde_json::Value::take)
                    .unwrap_or(serde_json::Value::Null);
                let spec = serde_json::from_value(spec).expect("spec parses");
                (header, spec)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::value;
    use super::*;

    #[test]
    fn header_of_a_sample_document() {
        let header: DocumentHeader = serde_json::from_value(value(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: bookinfo\n  labels: {app: reviews}\nspec:\n  hosts: [reviews]\n",
        ))
        .unwrap();
        assert_eq!(header.api_version, "networking.istio.io/v1");
        assert_eq!(header.kind, "VirtualService");
        assert_eq!(header.metadata.name.as_deref(), Some("reviews"));
        assert_eq!(header.metadata.namespace.as_deref(), Some("bookinfo"));
        assert_eq!(header.metadata.labels["app"], "reviews");
    }

    #[test]
    fn header_of_a_kubectl_export() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"security.istio.io/v1"}
  creationTimestamp: "2026-01-02T03:04:05Z"
  generation: 3
  managedFields:
  - apiVersion: security.istio.io/v1
    fieldsType: FieldsV1
    fieldsV1: {f:spec: {}}
    manager: kubectl-client-side-apply
    operation: Update
    time: "2026-01-02T03:04:05Z"
  name: default
  namespace: istio-system
  ownerReferences:
  - apiVersion: v1
    kind: ConfigMap
    name: owner
    uid: 0b0b
  finalizers: [example.com/keep]
  resourceVersion: "12345"
  uid: 6f1d0c1e-0000-4000-8000-000000000000
spec:
  mtls: {mode: STRICT}
status: {}
"#;
        let header: DocumentHeader = serde_json::from_value(value(yaml)).unwrap();
        assert_eq!(header.metadata.generation, Some(3));
        assert_eq!(header.metadata.resource_version.as_deref(), Some("12345"));
        assert_eq!(header.metadata.managed_fields.len(), 1);
        assert_eq!(header.metadata.owner_references.len(), 1);
        assert_eq!(header.metadata.finalizers, ["example.com/keep"]);
    }

    #[test]
    fn header_without_metadata_and_metadata_typo() {
        let header: DocumentHeader =
            serde_json::from_value(value("apiVersion: v1\nkind: Sidecar\n")).unwrap();
        assert_eq!(header.metadata, ObjectMeta::default());
        let err = serde_json::from_value::<DocumentHeader>(value(
            "apiVersion: v1\nkind: Sidecar\nmetadata: {name: a, namepsace: b}\n",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("namepsace"), "{err}");
    }

    #[test]
    fn null_collections_are_empty() {
        let meta: ObjectMeta = serde_json::from_value(value("labels:\nannotations: ~\n")).unwrap();
        assert!(meta.labels.is_empty() && meta.annotations.is_empty());
    }
}
