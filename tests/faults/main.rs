//! The fault suite: real servers and real processes on loopback, faults applied by signal
//! (SIGSTOP, SIGCONT, SIGKILL, by pid), by misbehaving peers, by rewriting config under load,
//! and in network namespaces the test creates.
//!
//! - `processes`: a hung backend among three, a backend killed mid-response (HTTP/1.1 and
//!   HTTP/2, unary and streaming), connection resets and accept-then-close.
//! - `flood`: 5,000 idle connections and slow-loris clients against a mesh-hyper server.
//! - `netns`: one endpoint blackholed by a route in a network namespace, then restored.
//! - `config`: config files replaced non-atomically, truncated, deleted and re-created, or
//!   swapped by symlink as Kubernetes does for a ConfigMap, under load.
//!
//! Every figure a test measures is printed (`cargo test --test faults -- --nocapture`).

#[path = "../common/mod.rs"]
mod common;

mod child;
mod config;
mod flood;
mod netns;
mod processes;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use mesh::{
    core::{Endpoint, Mesh, ServiceConfig, ServiceName, discover::StaticSource},
    hyper::MeshClient,
};

pub const SVC: &str = "reviews.test:9080";

pub fn name() -> ServiceName {
    SVC.parse().unwrap()
}

pub fn client(addrs: &[SocketAddr], config: ServiceConfig) -> MeshClient<Empty<Bytes>> {
    let endpoints = addrs.iter().map(|a| Endpoint::new(*a)).collect();
    let mesh = Mesh::builder()
        .service_with(SVC, StaticSource::new(endpoints).unwrap(), config)
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::new(mesh)
}

/// What a load loop saw: answers by backend, failures by message, in order of time.
#[derive(Default, Debug)]
pub struct Seen {
    pub ok: usize,
    pub failures: Vec<String>,
    /// (time since the start, backend) of every answer.
    pub answers: Vec<(Duration, String)>,
}

impl Seen {
    pub fn total(&self) -> usize {
        self.ok + self.failures.len()
    }

    pub fn success(&self) -> f64 {
        self.ok as f64 / self.total().max(1) as f64
    }
}

/// GETs `uri` from `concurrency` tasks until `stop` is set, `max` requests are done or
/// `within` passes.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(
        client: &MeshClient<Empty<Bytes>>,
        uri: &'static str,
        concurrency: usize,
        max: usize,
        within: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        let tasks = (0..concurrency)
            .map(|_| {
                let (client, stop, seen) = (client.clone(), stop.clone(), seen.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < within
                        && seen.lock().unwrap().total() < max
                    {
                        let r = client.request(common::get(uri)).await;
                        let mut s = seen.lock().unwrap();
                        match r {
                            Ok(rsp) if rsp.status().is_success() => {
                                s.ok += 1;
                                s.answers
                                    .push((started.elapsed(), common::backend_of(&rsp)));
                            }
                            Ok(rsp) => s.failures.push(format!("status {}", rsp.status())),
                            Err(e) => s.failures.push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    /// Requests done so far.
    pub fn done(&self) -> usize {
        self.seen.lock().unwrap().total()
    }

    /// Waits until `n` requests are done (or the load ends).
    pub async fn until(&self, n: usize) {
        while self.done() < n && !self.tasks.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// Outlier detection that acts within a test: eject after 3 failures, for 1 s to 2 s.
pub fn quick_ejection() -> mesh::core::outlier::OutlierDetection {
    mesh::core::outlier::OutlierDetection {
        consecutive_failures: Some(3),
        base_ejection_time: Duration::from_secs(1),
        max_ejection_time: Duration::from_secs(2),
        ..Default::default()
    }
}

/// How long after now the client's balancer ejects `endpoint` (polled every 5 ms, for at
/// most 10 s); `None` if it never does.
pub async fn ejection_of(
    client: &MeshClient<Empty<Bytes>>,
    endpoint: SocketAddr,
) -> Option<Duration> {
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(10) {
        let health = client
            .stats(&name())
            .and_then(|s| s.endpoints.into_iter().find(|e| e.addr == endpoint))
            .map(|e| e.health);
        if health == Some(mesh::core::outlier::HealthState::Ejected) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

impl Load {
    /// Waits (at most 15 s) for an answer from `backend` that came after `after` (time since
    /// the load started); returns whether one came.
    pub async fn answered_by_since(&self, backend: &str, after: Duration) -> bool {
        common::eventually(Duration::from_secs(15), async || {
            self.seen
                .lock()
                .unwrap()
                .answers
                .iter()
                .any(|(t, b)| *t > after && b == backend)
        })
        .await
    }
}

/// A summary of failures: message → count.
pub fn tally(failures: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for f in failures {
        *m.entry(f.clone()).or_default() += 1;
    }
    m
}

/// The failure kind mesh gives an error (what retries and outlier detection see).
pub fn kind_of(err: &mesh::hyper::Error) -> mesh::core::classify::FailureKind {
    use mesh::core::classify::{Classify, ResponseClass};
    match mesh::hyper::HttpClassifier.classify(Err::<&http::Response<()>, _>(err)) {
        ResponseClass::Failure(kind) => kind,
        ResponseClass::Success => panic!("an error classified as a success: {err}"),
    }
}
