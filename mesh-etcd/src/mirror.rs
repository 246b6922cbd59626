//! A key prefix mirrored from etcd: listed once, then watched from the revision seen, through
//! outages (reconnect with backoff and jitter, resume from the last revision, re-list when a
//! compaction passed it).

use std::time::Instant;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use mesh_core::telemetry::RemoteState;

use crate::EtcdOptions;

/// What changed under the prefix.
pub(crate) enum Update {
    /// The whole prefix (the first list, or a re-list after a compaction): replaces all.
    Reset(Vec<(String, Vec<u8>)>),
    /// Keys put (`Some`) or deleted (`None`), in order, as one batch (one etcd transaction
    /// arrives as one batch).
    Changes(Vec<(String, Option<Vec<u8>>)>),
}

/// Receives a mirror's updates, on the mirror's task.
pub(crate) trait Sink: Send + 'static {
    /// Applies an update; `revision` is etcd's revision after it.
    fn update(&mut self, update: Update, revision: i64);
    /// The connection changed (lost, back, a new revision seen through a progress notice).
    fn connection(&mut self, state: &RemoteState);
}

/// Lists `prefix`: its keys and values and the revision of the read.
pub(crate) async fn list(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<(String, Vec<u8>)>, i64), etcd_client::Error> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let kvs = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    Ok((kvs, revision))
}

/// Stops the mirror's task when dropped.
#[derive(Debug)]
pub(crate) struct MirrorTask(tokio::task::AbortHandle);

impl Drop for MirrorTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches `prefix` from `revision + 1` (the revision of the list the caller already gave
/// `sink`), for as long as the returned handle lives.
pub(crate) fn spawn(
    client: Client,
    options: EtcdOptions,
    prefix: String,
    revision: i64,
    sink: impl Sink,
) -> MirrorTask {
    let task = tokio::spawn(run(client, options, prefix, revision, sink));
    MirrorTask(task.abort_handle())
}

enum Next {
    Reconnect(String),
    Relist,
}

async fn run(
    mut client: Client,
    options: EtcdOptions,
    prefix: String,
    revision: i64,
    mut sink: impl Sink,
) {
    let mut state = RemoteState {
        connected: true,
        revision,
        relists: 1,
        ..RemoteState::default()
    };
    let mut lost_at: Option<Instant> = None;
    let mut attempt = 0u32;
    loop {
        let next = watch(
            &mut client,
            &prefix,
            &mut state,
            &mut sink,
            &mut lost_at,
            &mut attempt,
        )
        .await;
        match next {
            Next::Relist => {
                tracing::warn!(%prefix, revision = state.revision, "etcd compacted past the watch's revision: listing the prefix again");
                loop {
                    match list(&mut client, &prefix).await {
                        Ok((kvs, rev)) => {
                            state.revision = rev;
                            state.relists += 1;
                            sink.update(Update::Reset(kvs), rev);
                            sink.connection(&state);
                            break;
                        }
                        Err(e) => {
                            disconnected(
                                &mut state,
                                &mut lost_at,
                                &prefix,
                                e.to_string(),
                                &mut sink,
                            );
                            tokio::time::sleep(options.backoff(attempt)).await;
                            attempt = attempt.saturating_add(1);
                        }
                    }
                }
            }
            Next::Reconnect(reason) => {
                disconnected(&mut state, &mut lost_at, &prefix, reason, &mut sink);
                let wait = options.backoff(attempt);
                tracing::debug!(%prefix, ?wait, attempt, "etcd watch: reconnecting");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn disconnected(
    state: &mut RemoteState,
    lost_at: &mut Option<Instant>,
    prefix: &str,
    reason: String,
    sink: &mut impl Sink,
) {
    if state.connected {
        tracing::warn!(%prefix, error = %reason, revision = state.revision,
            "etcd watch lost; keeping the last good state and reconnecting");
        state.reconnects += 1;
        *lost_at = Some(Instant::now());
    }
    state.connected = false;
    state.disconnected_secs = lost_at.map(|t| t.elapsed().as_secs());
    state.last_error = Some(reason);
    sink.connection(state);
}

/// One watch, until it fails (→ reconnect) or a compaction passed it (→ re-list).
async fn watch(
    client: &mut Client,
    prefix: &str,
    state: &mut RemoteState,
    sink: &mut impl Sink,
    lost_at: &mut Option<Instant>,
    attempt: &mut u32,
) -> Next {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(state.revision + 1)
        .with_progress_notify();
    let mut stream = match client.watch(prefix, Some(options)).await {
        Ok(s) => s,
        Err(e) => return Next::Reconnect(e.to_string()),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Next::Reconnect("the watch stream ended".into()),
            Err(e) => return Next::Reconnect(e.to_string()),
        };
        if resp.compact_revision() > 0 {
            return Next::Relist;
        }
        if resp.canceled() {
            return Next::Reconnect(format!("watch canceled: {}", resp.cancel_reason()));
        }
        if !state.connected || resp.created() {
            if !state.connected {
                tracing::info!(%prefix, revision = state.revision,
                    down_secs = lost_at.map(|t| t.elapsed().as_secs_f64()),
                    "etcd watch re-established from the last revision");
            }
            state.connected = true;
            state.disconnected_secs = None;
            *lost_at = None;
            *attempt = 0;
            sink.connection(state);
        }
        let revision = resp.header().map_or(state.revision, |h| h.revision());
        let changes: Vec<(String, Option<Vec<u8>>)> = resp
            .events()
            .iter()
            .filter_map(|e| {
                let kv = e.kv()?;
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                Some(match e.event_type() {
                    EventType::Put => (key, Some(kv.value().to_vec())),
                    EventType::Delete => (key, None),
                })
            })
            .collect();
        if revision > state.revision {
            state.revision = revision;
            if changes.is_empty() {
                sink.connection(state);
            }
        }
        if !changes.is_empty() {
            sink.update(Update::Changes(changes), state.revision);
            sink.connection(state);
        }
    }
}
