//! Mirroring: copies of requests sent to another backend, fire and forget (Istio's `mirror` /
//! `mirrors`).
//!
//! A copy never affects the request it copies: it runs in a task of its own, bounded in time
//! ([`MIRROR_TIMEOUT`], or the route's timeout) and in number ([`MAX_MIRRORS_IN_FLIGHT`] per
//! destination; beyond, copies are skipped and counted), its response is read and dropped, and
//! its failures are only counted. A request body is copied from the bytes kept for retries
//! (at most 64 KiB): a request without a body is copied at once, one with a body when the
//! request's response head arrives, if the whole body was kept by then (a larger or still
//! streaming body is not copied, and the skip is counted).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use http::Request;
use http_body_util::BodyExt;
use mesh_core::{
    retry::ReplayBody,
    route::{HttpRoute, Percentage},
};
use tower::ServiceExt;

use super::{Dialect, RequestBody, backend::Backend};

/// Where a route's copies go, and what share of its requests.
pub(super) type MirrorTarget<B, D> = (Percentage, Arc<Backend<B, D>>);

/// How long a copy may take when its route has no timeout: 10 s.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Copies in flight at once per destination: 128.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 128;

/// The mirrors of one destination: counters and the bound on copies in flight.
#[derive(Debug, Default)]
pub(super) struct Mirrors {
    in_flight: AtomicUsize,
    sent: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// Mirror counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MirrorCounts {
    /// Copies sent.
    pub sent: u64,
    /// Copies that failed or timed out (the requests they copied were not affected).
    pub failed: u64,
    /// Copies not sent: too many in flight, or a body too large or still streaming.
    pub skipped: u64,
}

/// Copies waiting for the request's body to be complete.
pub(super) struct Pending<B, D> {
    jobs: Vec<Job<B, D>>,
    /// Set when there are jobs.
    mirrors: Option<Arc<Mirrors>>,
}

struct Job<B, D> {
    backend: Arc<Backend<B, D>>,
    parts: http::request::Parts,
    body: ReplayBody<B>,
    limit: Duration,
}

impl Mirrors {
    pub(super) fn counts(&self) -> MirrorCounts {
        MirrorCounts {
            sent: self.sent.load(Relaxed),
            failed: self.failed.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
        }
    }

    /// Starts the copies of one request: those with a complete body now, the others when
    /// [`Pending::after_head`] is called.
    pub(super) fn start<B: RequestBody, D: Dialect>(
        self: &Arc<Self>,
        route: &HttpRoute,
        targets: &[MirrorTarget<B, D>],
        parts: &http::request::Parts,
        body: &ReplayBody<B>,
    ) -> Pending<B, D> {
        let mut jobs = Vec::new();
        if targets.is_empty() {
            return Pending {
                jobs,
                mirrors: None,
            };
        }
        let limit = route.overrides.timeout.unwrap_or(MIRROR_TIMEOUT);
        for (pct, backend) in targets {
            if !pct.sample() {
                continue;
            }
            let Some(copy) = body.replay() else {
                self.skipped.fetch_add(1, Relaxed);
                tracing::debug!(service = %backend.service, "mirror skipped: the body is too large to copy");
                continue;
            };
            let job = Job {
                backend: backend.clone(),
                parts: parts.clone(),
                body: copy,
                limit,
            };
            if job.body.is_complete() {
                self.spawn(job);
            } else {
                jobs.push(job);
            }
        }
        Pending {
            mirrors: (!jobs.is_empty()).then(|| self.clone()),
            jobs,
        }
    }

    fn spawn<B: RequestBody, D: Dialect>(self: &Arc<Self>, job: Job<B, D>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.skipped.fetch_add(1, Relaxed);
            return;
        };
        if self.in_flight.fetch_add(1, Relaxed) >= MAX_MIRRORS_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Relaxed);
            self.skipped.fetch_add(1, Relaxed);
            tracing::debug!(service = %job.backend.service, "mirror skipped: too many copies in flight");
            return;
        }
        self.sent.fetch_add(1, Relaxed);
        let mirrors = self.clone();
        rt.spawn(async move {
            struct Done(Arc<Mirrors>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.in_flight.fetch_sub(1, Relaxed);
                }
            }
            let done = Done(mirrors);
            let Job {
                backend,
                parts,
                body,
                limit,
            } = job;
            let service = backend.service.clone();
            let call = async move {
                let rsp = backend.stack.clone().oneshot(Request::from_parts(parts, body)).await?;
                let status = rsp.status();
                // Read and drop the answer, so the connection can be reused.
                let _ = rsp.into_body().collect().await;
                Ok::<_, crate::Error>(status)
            };
            match tokio::time::timeout(limit, call).await {
                Ok(Ok(status)) => tracing::trace!(%service, %status, "mirror answered"),
                Ok(Err(e)) => {
                    done.0.failed.fetch_add(1, Relaxed);
                    tracing::debug!(%service, error = %e, "mirror failed (the request it copies is not affected)");
                }
                Err(_) => {
                    done.0.failed.fetch_add(1, Relaxed);
                    tracing::debug!(%service, after = ?limit, "mirror timed out (the request it copies is not affected)");
                }
            }
        });
    }
}

impl<B: RequestBody, D: Dialect> Pending<B, D> {
    /// The request's response head arrived: copies whose body is complete go now; the
    /// others are skipped.
    pub(super) fn after_head(self) {
        let Some(mirrors) = self.mirrors else {
            return;
        };
        for job in self.jobs {
            if job.body.is_complete() {
                mirrors.spawn(job);
            } else {
                mirrors.skipped.fetch_add(1, Relaxed);
                tracing::debug!(service = %job.backend.service, "mirror skipped: the body is too large or still streaming");
            }
        }
    }
}
