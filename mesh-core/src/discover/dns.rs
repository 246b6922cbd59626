//! A discovery source backed by DNS (A/AAAA or SRV), re-resolved at the record TTL.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolverConfig},
    net::{NetError, runtime::TokioRuntimeProvider},
    proto::rr::{Name, RData, RecordType},
};
use serde::{Deserialize, Serialize};

use super::{DiscoveryError, EndpointSource, Publisher, Subscription};
use crate::{
    ServiceName,
    endpoint::{Endpoint, EndpointSet},
};

/// How often DNS names are re-resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct DnsOptions {
    /// Never re-resolve sooner than this, whatever the TTL says, and wait this long before
    /// retrying a failed lookup. Default 5 s: Envoy's `dns_min_refresh_rate` default.
    #[serde(with = "crate::duration::serde")]
    pub min_refresh: Duration,
    /// Never keep an answer longer than this, whatever the TTL says. Default 60 s: bounds how
    /// stale an endpoint set can get behind a DNS server that hands out long TTLs.
    #[serde(with = "crate::duration::serde")]
    pub max_refresh: Duration,
    /// Time allowed for one lookup. Default 5 s: the resolv.conf `timeout` default.
    #[serde(with = "crate::duration::serde")]
    pub timeout: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            min_refresh: Duration::from_secs(5),
            max_refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
        }
    }
}

impl DnsOptions {
    fn clamp(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_refresh, self.max_refresh.max(self.min_refresh))
    }
}

/// A shared DNS resolver (hickory) for [`DnsSource`]s. Its answer cache is off: every refresh
/// asks the server, so TTL-driven re-resolution sees changes when the TTL says it should.
#[derive(Clone)]
pub struct DnsResolver {
    resolver: Arc<TokioResolver>,
    options: DnsOptions,
}

impl DnsResolver {
    /// A resolver using the system configuration (`/etc/resolv.conf`).
    pub fn system(options: DnsOptions) -> Result<Self, DiscoveryError> {
        let builder = TokioResolver::builder_tokio().map_err(|e| DiscoveryError::Other {
            source_name: "DNS".into(),
            reason: format!("cannot read the system resolver configuration: {e}"),
        })?;
        Ok(Self::finish(builder, options))
    }

    /// A resolver asking only the name server at `server` (UDP, falling back to TCP).
    pub fn with_server(server: SocketAddr, options: DnsOptions) -> Self {
        let mut udp = ConnectionConfig::udp();
        udp.port = server.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = server.port();
        let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
        let config = ResolverConfig::from_name_servers(vec![ns]);
        let builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        Self::finish(builder, options)
    }

    fn finish(
        mut builder: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
        options: DnsOptions,
    ) -> Self {
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = options.timeout;
        opts.attempts = 1;
        // The builder only fails for DNSSEC/TLS settings we never set; fall back to defaults
        // rather than panic if a future version changes that.
        let resolver = builder.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "DNS resolver configuration rejected; using defaults");
            TokioResolver::builder_with_config(
                ResolverConfig::default(),
                TokioRuntimeProvider::default(),
            )
            .build()
            .expect("the default resolver configuration is valid")
        });
        Self {
            resolver: Arc::new(resolver),
            options,
        }
    }

    /// The refresh options sources created from this resolver use.
    pub fn options(&self) -> &DnsOptions {
        &self.options
    }
}

impl fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolver")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
enum Query {
    /// A/AAAA of `host`, every address on `port`.
    Host { host: String, port: u16 },
    /// SRV records of `name`: targets, ports and weights from the records.
    Srv { name: String },
}

/// Endpoints from DNS, kept fresh by a background task.
///
/// - [`DnsSource::host`]: the A/AAAA records of a name, each address on the given port (what a
///   Kubernetes headless service resolves to);
/// - [`DnsSource::srv`]: the SRV records of a name (`_http._tcp.reviews.default.svc.cluster.local`):
///   only the lowest priority present is used (RFC 2782), weights become endpoint weights (SRV
///   weight 0 counts as 1) and targets are resolved to addresses.
///
/// The name is re-resolved when the answer's TTL runs out, clamped to
/// [`DnsOptions::min_refresh`]..=[`DnsOptions::max_refresh`]. A failed lookup — NXDOMAIN, no
/// records, timeout, server failure — keeps the last good endpoints (the error is recorded in the
/// snapshot and logged) and is retried after `min_refresh`. The task starts with the first
/// subscription and stops when the last one is dropped.
#[derive(Clone)]
pub struct DnsSource {
    inner: Arc<DnsInner>,
}

struct DnsInner {
    resolver: DnsResolver,
    query: Query,
    publisher: Publisher,
    running: Mutex<bool>,
}

impl DnsSource {
    /// The A/AAAA records of `host`, each address on `port`.
    pub fn host(resolver: DnsResolver, host: impl Into<String>, port: u16) -> Self {
        Self::new(
            resolver,
            Query::Host {
                host: host.into(),
                port,
            },
        )
    }

    /// The SRV records of `name`.
    pub fn srv(resolver: DnsResolver, name: impl Into<String>) -> Self {
        Self::new(resolver, Query::Srv { name: name.into() })
    }

    fn new(resolver: DnsResolver, query: Query) -> Self {
        Self {
            inner: Arc::new(DnsInner {
                resolver,
                query,
                publisher: Publisher::new(),
                running: Mutex::new(false),
            }),
        }
    }

    /// The queried name.
    pub fn name(&self) -> &str {
        match &self.inner.query {
            Query::Host { host, .. } => host,
            Query::Srv { name } => name,
        }
    }
}

impl EndpointSource for DnsSource {
    fn subscribe(&self, _service: &ServiceName) -> Subscription {
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        // Subscribe before deciding whether to start: the task re-checks for subscribers under
        // the same lock before it exits.
        let sub = self.inner.publisher.subscribe();
        if !*running {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    *running = true;
                    handle.spawn(refresh(self.inner.clone()));
                }
                Err(_) => self.inner.publisher.fail(DiscoveryError::Dns {
                    name: self.name().to_owned(),
                    reason: "DNS discovery must be started inside a tokio runtime".into(),
                }),
            }
        }
        sub
    }

    fn is_idle(&self) -> bool {
        self.inner.publisher.is_closed()
    }
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("query", &self.inner.query)
            .finish_non_exhaustive()
    }
}

/// The refresh loop of one name.
async fn refresh(inner: Arc<DnsInner>) {
    let opts = inner.resolver.options.clone();
    loop {
        let wait = match lookup(&inner.resolver.resolver, &inner.query).await {
            Ok((set, ttl)) => {
                let wait = opts.clamp(ttl);
                if inner.publisher.publish(set.clone()) {
                    tracing::debug!(name = %name_of(&inner.query), endpoints = ?set, ttl = ?ttl,
                        next_refresh = ?wait, "DNS endpoints changed");
                } else {
                    tracing::trace!(name = %name_of(&inner.query), endpoints = ?set, next_refresh = ?wait, "DNS endpoints unchanged");
                }
                wait
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?opts.min_refresh,
                    "DNS lookup failed; keeping the last good endpoints");
                inner.publisher.fail(err);
                opts.min_refresh
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = inner.publisher.closed() => {
                let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
                if inner.publisher.is_closed() {
                    *running = false;
                    tracing::debug!(name = %name_of(&inner.query), "DNS refresh stopped: no subscribers");
                    return;
                }
            }
        }
    }
}

fn name_of(q: &Query) -> &str {
    match q {
        Query::Host { host, .. } => host,
        Query::Srv { name } => name,
    }
}

fn dns_error(name: &str, e: &NetError) -> DiscoveryError {
    let reason = if e.is_nx_domain() {
        "NXDOMAIN (the name does not exist)".to_owned()
    } else if e.is_no_records_found() {
        "no records of the requested type".to_owned()
    } else {
        e.to_string()
    };
    DiscoveryError::Dns {
        name: name.to_owned(),
        reason,
    }
}

async fn lookup(
    resolver: &TokioResolver,
    query: &Query,
) -> Result<(EndpointSet, Duration), DiscoveryError> {
    let now = Instant::now();
    match query {
        Query::Host { host, port } => {
            let answer = resolver
                .lookup_ip(host.as_str())
                .await
                .map_err(|e| dns_error(host, &e))?;
            let mut addrs: Vec<IpAddr> = answer.iter().collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(DiscoveryError::Dns {
                    name: host.clone(),
                    reason: "no A/AAAA records".into(),
                });
            }
            let set = EndpointSet::new(
                addrs
                    .into_iter()
                    .map(|ip| Endpoint::new(SocketAddr::new(ip, *port)))
                    .collect(),
            )
            .expect("addresses were deduplicated");
            Ok((set, answer.valid_until().saturating_duration_since(now)))
        }
        Query::Srv { name } => {
            let answer = resolver
                .lookup(name.as_str(), RecordType::SRV)
                .await
                .map_err(|e| dns_error(name, &e))?;
            let mut valid_until = answer.valid_until();
            let srvs: Vec<_> = answer
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(srv) => Some(srv.clone()),
                    _ => None,
                })
                .collect();
            let Some(best) = srvs.iter().map(|s| s.priority).min() else {
                return Err(DiscoveryError::Dns {
                    name: name.clone(),
                    reason: "no SRV records".into(),
                });
            };
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for srv in srvs.iter().filter(|s| s.priority == best) {
                let ips = target_ips(
                    resolver,
                    answer.additionals(),
                    &srv.target,
                    &mut valid_until,
                )
                .await
                .map_err(|e| dns_error(&srv.target.to_string(), &e))?;
                for ip in ips {
                    let addr = SocketAddr::new(ip, srv.port);
                    // The same address under two SRV records: keep the larger weight.
                    match endpoints.iter_mut().find(|e| e.addr == addr) {
                        Some(e) => e.weight = e.weight.max(u32::from(srv.weight.max(1))),
                        None => endpoints.push(Endpoint::new(addr).weight(u32::from(srv.weight))),
                    }
                }
            }
            let set = EndpointSet::new(endpoints).expect("addresses were deduplicated");
            Ok((set, valid_until.saturating_duration_since(now)))
        }
    }
}

/// Addresses of an SRV target: from the answer's additional section when the server sent them,
/// otherwise by an A/AAAA lookup.
async fn target_ips(
    resolver: &TokioResolver,
    additionals: &[hickory_resolver::proto::rr::Record],
    target: &Name,
    valid_until: &mut Instant,
) -> Result<Vec<IpAddr>, NetError> {
    let from_additional: Vec<IpAddr> = additionals
        .iter()
        .filter(|r| &r.name == target)
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    if !from_additional.is_empty() {
        return Ok(from_additional);
    }
    let answer = resolver.lookup_ip(target.clone()).await?;
    *valid_until = (*valid_until).min(answer.valid_until());
    Ok(answer.iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped() {
        let o = DnsOptions {
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(o.clamp(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(o.clamp(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(o.clamp(Duration::from_secs(3600)), Duration::from_secs(10));
    }
}
