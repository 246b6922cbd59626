//! Where etcd is and how to talk to it.

use std::{path::PathBuf, time::Duration};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::EtcdError;

/// How to reach etcd: endpoints, credentials, TLS, timeouts and the reconnect backoff.
///
/// ```
/// use mesh_etcd::EtcdOptions;
///
/// let options = EtcdOptions::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379").unwrap();
/// assert_eq!(options.endpoints, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, one per member; requests go to any.
    pub endpoints: Vec<String>,
    /// User and password (etcd's auth), when the cluster has auth enabled.
    pub user: Option<(String, String)>,
    /// TLS to etcd: CA bundle, and a client certificate when the cluster asks for one.
    pub tls: Option<EtcdTls>,
    /// Bound of a connection attempt (default 2 s).
    pub connect_timeout: Duration,
    /// Bound of each request (default 5 s).
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive to each member: a PING every `keep_alive.0`, the connection given up
    /// when no answer comes within `keep_alive.1` (default 3 s, 3 s), so a member that
    /// vanished (power loss, a dropped route) is noticed even when nothing is written.
    pub keep_alive: (Duration, Duration),
    /// The first wait before reconnecting after a failure (default 100 ms); doubled at each
    /// failure up to `backoff_max`, with full jitter.
    pub backoff_min: Duration,
    /// The longest wait between reconnect attempts (default 5 s).
    pub backoff_max: Duration,
}

/// TLS settings for the connection to etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// PEM CA bundle the members' certificates chain to.
    pub ca: PathBuf,
    /// PEM client certificate and key, when etcd requires client certificates.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The name the members' certificates are checked against, when it is not the
    /// endpoint's host.
    pub domain: Option<String>,
}

impl EtcdOptions {
    /// Options for `endpoints` (`http://host:port`) with the defaults.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive: (Duration::from_secs(3), Duration::from_secs(3)),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    /// Parses `etcd://host:port[,host:port…]` (plaintext) or `etcds://…` (TLS: set
    /// [`tls`](Self::tls)), also accepting `http://` and `https://` endpoint lists.
    pub fn from_url(url: &str) -> Result<Self, EtcdError> {
        let invalid = |reason: &str| EtcdError::Options(format!("{url:?}: {reason}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected etcd://host:port[,host:port]"))?;
        let scheme = match scheme {
            "etcd" | "http" => "http",
            "etcds" | "https" => "https",
            _ => {
                return Err(invalid(
                    "the scheme is etcd://, etcds://, http:// or https://",
                ));
            }
        };
        let rest = rest.trim_end_matches('/');
        let mut endpoints = Vec::new();
        for hostport in rest.split(',') {
            let hostport = hostport
                .trim()
                .trim_start_matches("http://")
                .trim_start_matches("https://");
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| invalid("every endpoint needs host:port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid("every endpoint needs host:port"));
            }
            endpoints.push(format!("{scheme}://{hostport}"));
        }
        Ok(Self::new(endpoints))
    }

    /// Sets user and password.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Sets TLS.
    pub fn with_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The endpoints, joined, for logs and the debug snapshot (`etcd://a:2379,b:2379`, or
    /// `etcds://…` over TLS); never the password.
    pub fn display(&self) -> String {
        let tls = self.tls.is_some() || self.endpoints.iter().any(|e| e.starts_with("https://"));
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.split_once("://").map_or(e.as_str(), |(_, h)| h))
            .collect();
        let scheme = if tls { "etcds" } else { "etcd" };
        format!("{scheme}://{}", hosts.join(","))
    }

    /// Connects (authenticating when a user is set). The channel reconnects by itself
    /// afterwards; watches and leases built on it are re-established by this crate.
    pub async fn connect(&self) -> Result<Client, EtcdError> {
        if self.endpoints.is_empty() {
            return Err(EtcdError::Options("no etcd endpoint".into()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.keep_alive.0, self.keep_alive.1)
            .with_keep_alive_while_idle(true);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user, password);
        }
        if let Some(tls) = &self.tls {
            let read = |p: &PathBuf| {
                std::fs::read(p)
                    .map_err(|e| EtcdError::Options(format!("cannot read {}: {e}", p.display())))
            };
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.client {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &tls.domain {
                t = t.domain_name(domain);
            }
            options = options.with_tls(t);
        }
        let connect = Client::connect(&self.endpoints, Some(options));
        match tokio::time::timeout(self.connect_timeout + self.request_timeout, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(EtcdError::Connect {
                endpoints: self.display(),
                reason: e.to_string(),
            }),
            Err(_) => Err(EtcdError::Connect {
                endpoints: self.display(),
                reason: "timed out".into(),
            }),
        }
    }

    /// The wait before reconnect attempt `attempt` (0-based): exponential with full jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let max = self
            .backoff_min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.backoff_max);
        // Full jitter, never below a tenth of the minimum so a flapping member is not hammered.
        let floor = self.backoff_min / 10;
        floor + max.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_refused() {
        let o = EtcdOptions::from_url("etcds://a:1,b:2/").unwrap();
        assert_eq!(o.endpoints, ["https://a:1", "https://b:2"]);
        assert_eq!(o.display(), "etcds://a:1,b:2");
        assert_eq!(
            EtcdOptions::from_url("etcd://a:1").unwrap().display(),
            "etcd://a:1"
        );
        for bad in ["a:1", "ftp://a:1", "etcd://a", "etcd://:1", "etcd://a:x"] {
            assert!(EtcdOptions::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let o = EtcdOptions::new(["http://a:1"]);
        for attempt in 0..40 {
            let d = o.backoff(attempt);
            assert!(d <= o.backoff_max + o.backoff_min / 10, "{d:?}");
            assert!(d >= o.backoff_min / 10);
        }
    }
}
