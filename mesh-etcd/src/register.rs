//! Self-registration: a server's record under a lease kept alive, re-granted when lost, and
//! withdrawn on graceful shutdown.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use etcd_client::{Client, PutOptions};
use mesh_core::{ServiceName, discover::Announcement};

use crate::{EndpointRecord, EtcdError, EtcdOptions, record::record_key};

/// A server's record in an [`EtcdRegistry`](crate::EtcdRegistry), held under a lease with
/// keep-alive.
///
/// - killed (SIGKILL, power loss): the keep-alives stop and etcd deletes the record when the
///   lease's TTL runs out, so clients stop choosing the instance within the TTL;
/// - lease lost (expired while etcd or the network was down, or revoked): a new lease is
///   granted and the record written again, with a `warn` event;
/// - graceful shutdown: [`withdraw`](Self::withdraw) revokes the lease (deleting the record)
///   at once. Give the registration to mesh-hyper's `ServerSettings::announce` and
///   `serve_with_settings` withdraws it when its shutdown signal comes, before draining.
///
/// Dropping the registration stops the keep-alives (the record then expires with its lease).
///
/// ```no_run
/// use std::time::Duration;
/// use mesh_etcd::{EndpointRecord, EtcdOptions, Registration};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = EtcdOptions::from_url("etcd://127.0.0.1:2379")?;
/// let record = EndpointRecord::new("10.0.0.7:9080".parse()?).label("version", "v2");
/// let registration = Registration::register(
///     &etcd, "/mesh/services/", &"reviews.default:9080".parse()?, "reviews-v2-0",
///     record, Duration::from_secs(5),
/// ).await?;
/// // … serve; on SIGTERM:
/// registration.withdraw().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Registration {
    inner: Arc<Inner>,
    /// Shared by the handles only (not the task): the last one dropped stops the task.
    task: Arc<TaskGuard>,
}

struct TaskGuard(Mutex<Option<tokio::task::AbortHandle>>);

impl TaskGuard {
    fn stop(&self) {
        if let Some(task) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Inner {
    key: String,
    value: Vec<u8>,
    ttl: i64,
    client: Client,
    options: EtcdOptions,
    lease: AtomicI64,
    regrants: AtomicU64,
}

impl Registration {
    /// Writes `record` at `<prefix><service>/<instance>` under a new lease of `ttl` (whole
    /// seconds, at least 1; etcd may raise very short TTLs to its minimum) and keeps the lease
    /// alive in a background task.
    pub async fn register(
        options: &EtcdOptions,
        prefix: &str,
        service: &ServiceName,
        instance: &str,
        record: EndpointRecord,
        ttl: Duration,
    ) -> Result<Self, EtcdError> {
        if instance.is_empty() || instance.contains('/') {
            return Err(EtcdError::Options(format!(
                "instance {instance:?}: a non-empty name without '/'"
            )));
        }
        record
            .to_endpoint()
            .map_err(|e| EtcdError::Options(format!("record: {e}")))?;
        let client = options.connect().await?;
        let value =
            serde_json::to_vec(&record).map_err(|e| EtcdError::Options(format!("record: {e}")))?;
        let inner = Arc::new(Inner {
            key: record_key(prefix, service, instance),
            value,
            ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
            client,
            options: options.clone(),
            lease: AtomicI64::new(0),
            regrants: AtomicU64::new(0),
        });
        let lease = inner.grant_and_put().await?;
        tracing::info!(key = %inner.key, lease, ttl = inner.ttl, "registered in etcd");
        let task = tokio::spawn(keep_alive(inner.clone()));
        Ok(Self {
            inner,
            task: Arc::new(TaskGuard(Mutex::new(Some(task.abort_handle())))),
        })
    }

    /// The record's key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The lease the record is held under now.
    pub fn lease(&self) -> i64 {
        self.inner.lease.load(Ordering::Acquire)
    }

    /// Leases granted again after one was lost.
    pub fn regrants(&self) -> u64 {
        self.inner.regrants.load(Ordering::Relaxed)
    }

    /// Stops the keep-alives and revokes the lease, deleting the record now (bounded by the
    /// request timeout; on failure the record expires with its lease).
    pub async fn withdraw(&self) {
        self.task.stop();
        let lease = self.lease();
        let mut client = self.inner.client.clone();
        let revoke = client.lease_revoke(lease);
        match tokio::time::timeout(self.inner.options.request_timeout, revoke).await {
            Ok(Ok(_)) => tracing::info!(key = %self.inner.key, lease, "registration withdrawn"),
            Ok(Err(e)) => tracing::warn!(key = %self.inner.key, error = %e,
                "cannot withdraw the registration; it expires with its lease"),
            Err(_) => tracing::warn!(key = %self.inner.key,
                "withdrawing the registration timed out; it expires with its lease"),
        }
    }
}

impl Inner {
    /// Grants a lease and writes the record under it.
    async fn grant_and_put(&self) -> Result<i64, EtcdError> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.ttl, None)
            .await
            .map_err(|e| EtcdError::request("granting a lease", e))?
            .id();
        client
            .put(
                self.key.as_str(),
                self.value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| EtcdError::request(format!("writing {}", self.key), e))?;
        self.lease.store(lease, Ordering::Release);
        Ok(lease)
    }
}

/// Keeps the lease alive every third of its TTL; re-grants it (and writes the record again)
/// when etcd says it is gone; reconnects with backoff when etcd is unreachable.
async fn keep_alive(this: Arc<Inner>) {
    let mut attempt = 0u32;
    loop {
        let lease = this.lease.load(Ordering::Acquire);
        let period = Duration::from_millis(u64::try_from(this.ttl).unwrap_or(1) * 1000 / 3);
        let answer_within = this.options.request_timeout;
        let mut client = this.client.clone();
        let lost = match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if let Err(e) = keeper.keep_alive().await {
                    break Err(e.to_string());
                }
                match tokio::time::timeout(answer_within, stream.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl() > 0 => {
                        attempt = 0;
                        tokio::time::sleep(period).await;
                    }
                    Ok(Ok(Some(_))) => break Ok(()),
                    Ok(Ok(None)) => break Err("the keep-alive stream ended".into()),
                    Ok(Err(e)) => break Err(e.to_string()),
                    Err(_) => break Err("no keep-alive answer in time".into()),
                }
            },
            Err(e) => Err(e.to_string()),
        };
        match lost {
            // etcd answered: the lease is gone (expired or revoked). Take a new one.
            Ok(()) => {
                tracing::warn!(key = %this.key, lease, "registration lease lost: granting a new one and writing the record again");
                match this.grant_and_put().await {
                    Ok(new) => {
                        this.regrants.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(key = %this.key, lease = new, "registered again");
                        attempt = 0;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(key = %this.key, error = %e, "cannot register again; retrying");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(key = %this.key, lease, error = %e, "lease keep-alive failed; retrying");
            }
        }
        tokio::time::sleep(this.options.backoff(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

impl Announcement for Registration {
    fn withdraw(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Registration::withdraw(self))
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.inner.key)
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}
