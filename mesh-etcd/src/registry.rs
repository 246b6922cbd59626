//! The etcd registry: every service's endpoints from records under a key prefix, watched.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fmt,
    sync::{Arc, Mutex, Weak},
    time::SystemTime,
};

use mesh_core::{
    Endpoint, ServiceName,
    discover::{DiscoveryError, EndpointSource, Publisher, Registry, Subscription},
    endpoint::EndpointSet,
    telemetry::{ConfigError, ConfigSourceSnapshot, RemoteState},
};

use crate::{
    EtcdError, EtcdOptions,
    mirror::{self, MirrorTask, Sink, Update},
    record,
};

/// Rejected records remembered for the debug snapshot.
const RECENT: usize = 8;

/// Endpoints of every service registered under a key prefix of etcd, kept live by a watch.
///
/// Records are [`EndpointRecord`](crate::EndpointRecord)s at `<prefix><service>/<instance>`,
/// written by [`Registration`](crate::Registration) (or any tool). A record that is not valid
/// — garbage, a half-written value, an unknown field, a key that names no service — is
/// skipped with a `warn` event naming the key and counted
/// ([`RemoteState::skipped_records`]); the other records of its service stay. When etcd is
/// unreachable the registry keeps the endpoints it has, reconnects with backoff and jitter,
/// resumes the watch from the last revision it saw (listing the prefix again when a
/// compaction passed it), and reports all of it in `/mesh/debug`.
///
/// ```no_run
/// use mesh_core::{Mesh, ServiceConfig};
/// use mesh_etcd::{EtcdOptions, EtcdRegistry};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = EtcdOptions::from_url("etcd://127.0.0.1:2379")?;
/// let registry = EtcdRegistry::connect(&etcd, "/mesh/services/").await?;
/// let mesh = Mesh::builder().registry(registry, ServiceConfig::default()).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    origin: String,
    prefix: String,
    authoritative: bool,
    state: Mutex<State>,
    /// Stops the watch when the registry is dropped.
    task: Mutex<Option<MirrorTask>>,
}

#[derive(Default)]
struct State {
    /// Valid records by key.
    records: HashMap<String, (ServiceName, Endpoint)>,
    /// The same, by service then key (keys order duplicates deterministically).
    services: BTreeMap<ServiceName, BTreeMap<String, Endpoint>>,
    publishers: HashMap<ServiceName, Publisher>,
    remote: RemoteState,
    /// Batches applied (the first list is 1).
    updates: u64,
    recent: VecDeque<(SystemTime, String)>,
    /// Keys whose record is invalid now, with the reason.
    invalid: BTreeMap<String, String>,
}

impl EtcdRegistry {
    /// Connects, lists `prefix` (which must succeed: there is no last good state yet) and
    /// watches it.
    pub async fn connect(options: &EtcdOptions, prefix: &str) -> Result<Self, EtcdError> {
        Self::connect_with(options, prefix, false).await
    }

    /// Like [`connect`](Self::connect), answering for every name
    /// ([`Registry::authoritative`]): a service that has not registered yet has no endpoints
    /// (requests fail with `NoEndpoints` until it registers) instead of falling back to DNS.
    pub async fn connect_authoritative(
        options: &EtcdOptions,
        prefix: &str,
    ) -> Result<Self, EtcdError> {
        Self::connect_with(options, prefix, true).await
    }

    async fn connect_with(
        options: &EtcdOptions,
        prefix: &str,
        authoritative: bool,
    ) -> Result<Self, EtcdError> {
        let mut client = options.connect().await?;
        let started = std::time::Instant::now();
        let (kvs, revision) = mirror::list(&mut client, prefix)
            .await
            .map_err(|e| EtcdError::request(format!("listing {prefix:?}"), e))?;
        let inner = Arc::new(Inner {
            origin: format!("{}{prefix}", options.display()),
            prefix: prefix.to_owned(),
            authoritative,
            state: Mutex::new(State::default()),
            task: Mutex::new(None),
        });
        let records = kvs.len();
        inner.apply(Update::Reset(kvs), revision);
        {
            let mut s = inner.lock();
            s.remote.connected = true;
            s.remote.relists = 1;
        }
        tracing::info!(origin = %inner.origin, records, services = inner.lock().services.len(),
            revision, ms = started.elapsed().as_secs_f64() * 1e3, "etcd registry listed");
        let sink = RegistrySink(Arc::downgrade(&inner));
        let task = mirror::spawn(client, options.clone(), prefix.to_owned(), revision, sink);
        *inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(Self { inner })
    }

    /// The endpoints of `service` now.
    pub fn endpoints(&self, service: &ServiceName) -> EndpointSet {
        endpoint_set(&self.inner.lock(), service)
    }

    /// The connection and revision.
    pub fn remote_state(&self) -> RemoteState {
        self.inner.lock().remote.clone()
    }

    /// The prefix watched.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update replaces whole values: a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, update: Update, revision: i64) {
        let mut s = self.lock();
        let mut touched: Vec<ServiceName> = Vec::new();
        let changes = match update {
            Update::Reset(kvs) => {
                touched.extend(s.services.keys().cloned());
                s.records.clear();
                s.services.clear();
                s.invalid.clear();
                kvs.into_iter().map(|(k, v)| (k, Some(v))).collect()
            }
            Update::Changes(c) => c,
        };
        for (key, value) in changes {
            s.invalid.remove(&key);
            if let Some((service, _)) = s.records.remove(&key) {
                if let Some(m) = s.services.get_mut(&service) {
                    m.remove(&key);
                    if m.is_empty() {
                        s.services.remove(&service);
                    }
                }
                touched.push(service);
            }
            let Some(value) = value else { continue };
            match record::parse_record(&self.prefix, &key, &value) {
                Ok((service, endpoint)) => {
                    s.services
                        .entry(service.clone())
                        .or_default()
                        .insert(key.clone(), endpoint.clone());
                    s.records.insert(key, (service.clone(), endpoint));
                    touched.push(service);
                }
                Err(e) => {
                    tracing::warn!(origin = %self.origin, error = %e, "etcd record skipped; the other records stay");
                    s.remote.skipped_records += 1;
                    if s.recent.len() == RECENT {
                        s.recent.pop_front();
                    }
                    s.recent.push_back((SystemTime::now(), e.to_string()));
                    s.invalid.insert(key, e.to_string());
                }
            }
        }
        s.remote.revision = revision;
        s.updates += 1;
        touched.sort();
        touched.dedup();
        let mut changed = 0;
        for service in &touched {
            let Some(publisher) = s.publishers.get(service) else {
                continue;
            };
            if publisher.publish(endpoint_set(&s, service)) {
                changed += 1;
            }
        }
        tracing::debug!(origin = %self.origin, revision, services = touched.len(), changed, "etcd registry updated");
    }

    fn connection(&self, state: &RemoteState) {
        let mut s = self.lock();
        let was = s.remote.connected;
        let skipped = s.remote.skipped_records;
        s.remote = RemoteState {
            skipped_records: skipped,
            ..state.clone()
        };
        if was && !state.connected {
            let error = DiscoveryError::Other {
                source_name: self.origin.clone(),
                reason: format!(
                    "etcd unreachable ({}); keeping the last endpoints",
                    state.last_error.as_deref().unwrap_or("connection lost")
                ),
            };
            for p in s.publishers.values() {
                p.fail(error.clone());
            }
        } else if !was && state.connected {
            // Publishing the set again clears the recorded error.
            for (service, p) in &s.publishers {
                p.publish(endpoint_set(&s, service));
            }
        }
    }
}

/// The endpoints of `service`: its valid records, the first of each address by key.
fn endpoint_set(s: &State, service: &ServiceName) -> EndpointSet {
    let Some(records) = s.services.get(service) else {
        return EndpointSet::empty();
    };
    let mut seen = std::collections::HashSet::new();
    let mut endpoints = Vec::with_capacity(records.len());
    for (key, e) in records {
        if seen.insert(e.addr) {
            endpoints.push(e.clone());
        } else {
            tracing::warn!(%key, addr = %e.addr, %service, "etcd record repeats an address of its service: skipped");
        }
    }
    EndpointSet::new(endpoints).unwrap_or_else(|_| EndpointSet::empty())
}

struct RegistrySink(Weak<Inner>);

impl Sink for RegistrySink {
    fn update(&mut self, update: Update, revision: i64) {
        if let Some(inner) = self.0.upgrade() {
            inner.apply(update, revision);
        }
    }

    fn connection(&mut self, state: &RemoteState) {
        if let Some(inner) = self.0.upgrade() {
            inner.connection(state);
        }
    }
}

impl EndpointSource for EtcdRegistry {
    fn subscribe(&self, service: &ServiceName) -> Subscription {
        let mut s = self.inner.lock();
        if let Some(p) = s.publishers.get(service) {
            return p.subscribe();
        }
        let publisher = Publisher::new();
        publisher.publish(endpoint_set(&s, service));
        let sub = publisher.subscribe();
        s.publishers.insert(service.clone(), publisher);
        sub
    }
}

impl Registry for EtcdRegistry {
    fn services(&self) -> Vec<ServiceName> {
        self.inner.lock().services.keys().cloned().collect()
    }

    fn authoritative(&self) -> bool {
        self.inner.authoritative
    }

    fn status(&self) -> ConfigSourceSnapshot {
        let s = self.inner.lock();
        ConfigSourceSnapshot {
            kind: "etcd-registry",
            path: self.inner.origin.clone(),
            version: s.updates,
            digest: None,
            rejections: s.remote.skipped_records,
            last_error: s.invalid.values().next().cloned(),
            recent_errors: s
                .recent
                .iter()
                .map(|(at, e)| ConfigError {
                    at_unix_secs: at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    error: e.clone(),
                })
                .collect(),
            remote: Some(s.remote.clone()),
        }
    }
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("origin", &self.inner.origin)
            .field("revision", &self.inner.lock().remote.revision)
            .finish_non_exhaustive()
    }
}
