//! Logical service names.
//!
//! Applications address services by name (`http://reviews.default:9080/...`), never by endpoint.
//! A [`ServiceName`] is that name normalized: lowercase host, explicit port, so that
//! `Reviews.Default:9080` and `reviews.default:9080` are one destination, and `reviews.default`
//! seen on an `http` request is `reviews.default:80`.
//!
//! ```
//! use mesh_core::ServiceName;
//!
//! let name = ServiceName::from_authority("Reviews.Default:9080", 80).unwrap();
//! assert_eq!(name.as_str(), "reviews.default:9080");
//! assert_eq!((name.host(), name.port()), ("reviews.default", 9080));
//! assert_eq!(ServiceName::from_authority("ratings", 80).unwrap().as_str(), "ratings:80");
//! ```

use std::{fmt, net::IpAddr, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A normalized `host:port` naming one logical service. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    name: Arc<str>,
    /// Byte offset of the `:` before the port.
    colon: usize,
    port: u16,
}

/// Why an authority or service name could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {input:?}: {reason}")]
pub struct NameError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ServiceName {
    /// Normalizes an authority (`host`, `host:port`, `[v6]:port`); `default_port` is used when
    /// it has no port (80 for `http`, 443 for `https`).
    pub fn from_authority(authority: &str, default_port: u16) -> Result<Self, NameError> {
        let fail = |reason| NameError {
            input: authority.to_owned(),
            reason,
        };
        let parsed =
            http::uri::Authority::from_str(authority).map_err(|_| fail("not a valid authority"))?;
        if authority.contains('@') {
            return Err(fail("must not contain user info"));
        }
        let host = parsed.host();
        if host.is_empty() {
            return Err(fail("host is empty"));
        }
        let port = match parsed.port() {
            // `u16::from_str` (which the authority parser uses) takes a sign: "+80" is not a port.
            Some(p) if !p.as_str().bytes().all(|b| b.is_ascii_digit()) => {
                return Err(fail("port must be decimal digits"));
            }
            Some(p) => p.as_u16(),
            None if authority.ends_with(':') => return Err(fail("port is empty")),
            None => default_port,
        };
        if port == 0 {
            return Err(fail("port 0 is not routable"));
        }
        let host = host.to_ascii_lowercase();
        let name = format!("{host}:{port}");
        Ok(Self {
            colon: host.len(),
            name: Arc::from(name),
            port,
        })
    }

    /// Parses a configured service name, which must carry its port (`reviews.default:9080`).
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let parsed = Self::from_authority(name, 0).map_err(|mut e| {
            if e.reason == "port 0 is not routable" {
                e.reason = "a service name needs its port, e.g. \"reviews.default:9080\"";
            }
            e
        })?;
        Ok(parsed)
    }

    /// The whole name, `host:port`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The lowercase host (an IPv6 literal keeps its brackets).
    pub fn host(&self) -> &str {
        &self.name[..self.colon]
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        let host = self.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        host.parse().ok()
    }
}

impl FromStr for ServiceName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.name)
    }
}

impl Serialize for ServiceName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_case_and_port() {
        let n = ServiceName::from_authority("Reviews.DEFAULT", 80).unwrap();
        assert_eq!(n.as_str(), "reviews.default:80");
        assert_eq!(n.ip(), None);
        let v6 = ServiceName::from_authority("[::1]:8080", 80).unwrap();
        assert_eq!(v6.host(), "[::1]");
        assert_eq!(v6.ip(), Some("::1".parse().unwrap()));
        assert_eq!(
            ServiceName::from_authority("10.0.0.1", 443).unwrap().ip(),
            Some("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn rejects_bad_names() {
        assert!(
            ServiceName::parse("reviews")
                .unwrap_err()
                .reason
                .contains("port")
        );
        assert!(ServiceName::from_authority("", 80).is_err());
        assert!(ServiceName::from_authority("a b:80", 80).is_err());
        assert!(ServiceName::from_authority("u@host:80", 80).is_err());
        assert!(ServiceName::from_authority("host:0", 80).is_err());
        assert!(ServiceName::from_authority("host:", 80).is_err());
    }
}
