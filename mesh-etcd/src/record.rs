//! Endpoint records: one JSON value per instance, under `<prefix><service>/<instance>`.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr};

use mesh_core::{Endpoint, ServiceName, identity::SpiffeId};
use serde::{Deserialize, Serialize};

/// One instance of a service as etcd holds it, at `<prefix><service>/<instance>`
/// (`/mesh/services/reviews.default:9080/reviews-v2-7f9c`):
///
/// ```json
/// {"address": "10.0.0.7", "port": 9080, "weight": 1,
///  "labels": {"app": "reviews", "version": "v2"},
///  "identity": "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"}
/// ```
///
/// `weight` (default 1), `labels` and `identity` may be left out; any other field is an error,
/// so a typo is reported rather than ignored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRecord {
    /// The instance's IP address.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// Relative share of traffic (≥ 1; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Workload labels (subsets select on them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The SPIFFE ID the instance presents under mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A record that is not valid: what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The key is not `<prefix><service>/<instance>` with a valid service name.
    #[error("key {key:?}: {reason}")]
    Key {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The value is not a valid record.
    #[error("key {key:?}: {reason}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong (the JSON error, with its position, or the invalid field).
        reason: String,
    },
}

impl EndpointRecord {
    /// A record for `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            address: addr.ip(),
            port: addr.port(),
            weight: None,
            labels: BTreeMap::new(),
            identity: None,
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the identity.
    pub fn identity(mut self, id: &SpiffeId) -> Self {
        self.identity = Some(id.to_string());
        self
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = Some(weight);
        self
    }

    /// The endpoint it describes.
    pub fn to_endpoint(&self) -> Result<Endpoint, String> {
        let mut e = Endpoint::new(SocketAddr::new(self.address, self.port));
        if let Some(w) = self.weight {
            if w == 0 {
                return Err("weight: 0 is not a weight (remove the record instead)".into());
            }
            e = e.weight(w);
        }
        if self.port == 0 {
            return Err("port: 0 is not a port".into());
        }
        for (k, v) in &self.labels {
            e = e.label(k, v);
        }
        if let Some(id) = &self.identity {
            e = e.identity(SpiffeId::parse(id).map_err(|err| format!("identity: {err}"))?);
        }
        Ok(e)
    }
}

/// The key of `instance` of `service` under `prefix`.
pub fn record_key(prefix: &str, service: &ServiceName, instance: &str) -> String {
    format!("{prefix}{service}/{instance}")
}

/// Parses a record at `key` (under `prefix`) as the registry does: its service and endpoint,
/// or what is wrong with the key or the value. Never panics, whatever the bytes.
pub fn parse_record(
    prefix: &str,
    key: &str,
    value: &[u8],
) -> Result<(ServiceName, Endpoint), RecordError> {
    let key_error = |reason: String| RecordError::Key {
        key: key.to_owned(),
        reason,
    };
    let rest = key
        .strip_prefix(prefix)
        .ok_or_else(|| key_error(format!("not under the prefix {prefix:?}")))?;
    let (service, instance) = rest
        .split_once('/')
        .ok_or_else(|| key_error("expected <prefix><service host:port>/<instance>".into()))?;
    if instance.is_empty() || instance.contains('/') {
        return Err(key_error(
            "expected <prefix><service host:port>/<instance>".into(),
        ));
    }
    let service = ServiceName::parse(service).map_err(|e| key_error(e.to_string()))?;
    let value_error = |reason: String| RecordError::Value {
        key: key.to_owned(),
        reason,
    };
    let record: EndpointRecord =
        serde_json::from_slice(value).map_err(|e| value_error(format!("invalid record: {e}")))?;
    let endpoint = record.to_endpoint().map_err(value_error)?;
    Ok((service, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_garbage_is_named() {
        let (svc, ep) = parse_record(
            "/p/",
            "/p/reviews.default:9080/a",
            br#"{"address":"10.0.0.1","port":9080,"weight":2,"labels":{"version":"v1"}}"#,
        )
        .unwrap();
        assert_eq!(svc.as_str(), "reviews.default:9080");
        assert_eq!(ep.addr, "10.0.0.1:9080".parse().unwrap());
        assert_eq!(ep.weight, 2);
        assert_eq!(ep.labels.get("version"), Some("v1"));
        for (key, value) in [
            ("/p/reviews:9080/a", &b"{\"address\":\"10.0.0.1\""[..]),
            ("/p/reviews:9080/a", b"garbage"),
            ("/p/reviews:9080/a", br#"{"address":"host","port":1}"#),
            (
                "/p/reviews:9080/a",
                br#"{"address":"10.0.0.1","port":1,"wieght":1}"#,
            ),
            (
                "/p/reviews:9080/a",
                br#"{"address":"10.0.0.1","port":1,"weight":0}"#,
            ),
            (
                "/p/reviews:9080/a",
                br#"{"address":"10.0.0.1","port":1,"identity":"x"}"#,
            ),
            ("/p/reviews:9080", br#"{"address":"10.0.0.1","port":1}"#),
            ("/p/bad name:x/a", br#"{"address":"10.0.0.1","port":1}"#),
            (
                "/other/reviews:9080/a",
                br#"{"address":"10.0.0.1","port":1}"#,
            ),
        ] {
            let err = parse_record("/p/", key, value).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn a_record_round_trips() {
        let r = EndpointRecord::new("127.0.0.1:8080".parse().unwrap())
            .label("version", "v2")
            .weight(3);
        let json = serde_json::to_vec(&r).unwrap();
        let (_, ep) = parse_record("/p/", "/p/a:1/x", &json).unwrap();
        assert_eq!(ep.weight, 3);
    }
}
