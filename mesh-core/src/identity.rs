//! Workload identity: SPIFFE IDs.
//!
//! Every workload in the mesh has an identity of the form
//! `spiffe://<trust-domain>/<path>`; Istio and Linkerd use the path
//! `/ns/<namespace>/sa/<service-account>`. Identities travel in X.509 certificates as URI SANs and
//! are what authorization policies match on.
//!
//! Parsing is strict and follows the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>): lowercase scheme, a
//! trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]` that are neither empty nor
//! `.`/`..`, no trailing slash, no query, fragment, port or user info, at most 2048 bytes.
//!
//! ```
//! use mesh_core::identity::SpiffeId;
//!
//! let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap();
//! assert_eq!(id.trust_domain(), "cluster.local");
//! assert_eq!(id.namespace(), Some("default"));
//! assert_eq!(id.service_account(), Some("reviews"));
//!
//! let err = "spiffe://Cluster.local/ns/x".parse::<SpiffeId>().unwrap_err();
//! assert!(err.to_string().contains("trust domain"));
//! ```

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest SPIFFE ID accepted, from the SPIFFE ID specification (section 2.3: URIs of more than
/// 2048 bytes are not interoperable).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME: &str = "spiffe://";

/// A parsed, validated SPIFFE ID (`spiffe://<trust-domain>/<path>`). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte offset where the path (starting with `/`) begins; equals `uri.len()` when empty.
    path_start: usize,
}

/// Why a string is not a valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct SpiffeIdError {
    /// The rejected input (truncated to 256 bytes).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let fail = |reason| SpiffeIdError {
            input: truncate(input, 256),
            reason,
        };
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(fail("longer than 2048 bytes"));
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| fail("must start with \"spiffe://\" (lowercase scheme)"))?;
        if rest.contains(['?', '#']) {
            return Err(fail("must not contain a query or fragment"));
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(fail("trust domain is empty"));
        }
        if td.contains('@') {
            return Err(fail("trust domain must not contain user info"));
        }
        if td.contains(':') {
            return Err(fail("trust domain must not contain a port"));
        }
        if !td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        }) {
            return Err(fail(
                "trust domain may only contain lowercase letters, digits, '.', '-' and '_'",
            ));
        }
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(fail("path must not end with '/'"));
            }
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(fail("path has an empty segment")),
                    "." | ".." => return Err(fail("path segments must not be '.' or '..'")),
                    s if !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
                    {
                        return Err(fail(
                            "path segments may only contain letters, digits, '.', '-' and '_'",
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            uri: Arc::from(input),
            path_start: SCHEME.len() + td.len(),
        })
    }

    /// Builds the Istio/Linkerd form `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn from_parts(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The whole ID as a string (`spiffe://...`).
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/` (empty for a trust-domain ID).
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The namespace when the path has Istio's `/ns/<ns>/sa/<sa>` form.
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account when the path has Istio's `/ns/<ns>/sa/<sa>` form.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }

    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

/// The verified identity of the peer of an incoming request, put in request extensions by the
/// server's TLS acceptor (`None`: plaintext, or a client without a certificate). Authorization
/// and per-caller rate limits read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerIdentity(pub Option<SpiffeId>);

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_istio_and_generic_forms() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/reviews");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("reviews"));

        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(td.namespace(), None);

        let other = SpiffeId::parse("spiffe://example.org/workload/A-1_b.c").unwrap();
        assert_eq!(other.namespace(), None);
        assert_eq!(
            SpiffeId::from_parts("td", "ns1", "sa1").unwrap().as_str(),
            "spiffe://td/ns/ns1/sa/sa1"
        );
    }

    #[test]
    fn rejects_malformed_ids_with_reasons() {
        let cases = [
            ("http://example.org/x", "spiffe://"),
            ("SPIFFE://example.org/x", "spiffe://"),
            ("spiffe:///ns/x", "trust domain is empty"),
            ("spiffe://Example.org/x", "lowercase"),
            ("spiffe://example.org:8080/x", "port"),
            ("spiffe://user@example.org/x", "user info"),
            ("spiffe://example.org/x/", "end with"),
            ("spiffe://example.org//x", "empty segment"),
            ("spiffe://example.org/./x", "'.'"),
            ("spiffe://example.org/x?y=1", "query"),
            ("spiffe://example.org/x#frag", "query or fragment"),
            ("spiffe://example.org/a b", "letters"),
        ];
        for (input, needle) in cases {
            let err = SpiffeId::parse(input).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{input}: {err} should mention {needle}"
            );
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert!(SpiffeId::parse(&long).is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/ns/a/sa/b\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/a/sa/b\""
        );
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://TD/x\"").is_err());
    }
}
