//! The scenarios: which variants run, against which backends, and the figures they must show.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use mesh::core::{BalanceConfig, Endpoint, LbPolicy, Mesh, ServiceConfig, discover::StaticSource};
use mesh::hyper::MeshClient;

use crate::{
    Opts, Variant, backend,
    load::{self, Target},
    report::{Check, Row, find},
    sidecar::HaProxy,
    targets,
};

fn mesh_client(
    endpoints: Vec<Endpoint>,
    policy: LbPolicy,
) -> MeshClient<http_body_util::Empty<bytes::Bytes>> {
    let config = ServiceConfig {
        balance: BalanceConfig {
            policy,
            ..BalanceConfig::default()
        },
        ..ServiceConfig::default()
    };
    let mesh = Mesh::builder()
        .service_with(
            "bench.backend:8080",
            StaticSource::new(endpoints).expect("distinct endpoints"),
            config,
        )
        .without_dns_fallback()
        .build()
        .expect("valid bench mesh");
    MeshClient::new(mesh)
}

fn no_external() -> Duration {
    Duration::ZERO
}

/// A variant whose target (client, pools, connections) is built afresh for every run, so that
/// rounds are independent samples: connection tasks land on runtime workers anew each time,
/// instead of one lucky or unlucky placement repeating in every round.
fn per_run<T: Target>(
    name: &str,
    make: impl Fn() -> T + 'static,
    external: Arc<dyn Fn() -> Duration + Send + Sync>,
) -> Variant {
    per_run_counting(name, make, external, None)
}

/// Like [`per_run`], also reporting the share of requests one backend answered
/// (`slow_share_pct`), counted during the measured run only.
fn per_run_counting<T: Target>(
    name: &str,
    make: impl Fn() -> T + 'static,
    external: Arc<dyn Fn() -> Duration + Send + Sync>,
    counted: Option<Arc<AtomicU64>>,
) -> Variant {
    Variant {
        name: name.to_owned(),
        run: Box::new(move |c, warmup, duration| {
            let target = Arc::new(make());
            let external = external.clone();
            let counted = counted.clone();
            Box::pin(async move {
                load::run(target.clone(), c, warmup, &*external).await;
                let before = counted.as_ref().map(|h| h.load(Ordering::Relaxed));
                let mut sample = load::run(target, c, duration, &*external).await;
                if let (Some(h), Some(before)) = (&counted, before) {
                    let hits = h.load(Ordering::Relaxed) - before;
                    sample.extra.insert(
                        "slow_share_pct",
                        hits as f64 * 100.0 / sample.requests.max(1) as f64,
                    );
                }
                sample
            })
        }),
    }
}

/// `overhead`: raw hyper-util vs the mesh client vs one HAProxy hop, one backend.
pub struct Overhead {
    _backend: backend::Backend,
    _haproxy: Arc<HaProxy>,
    pub variants: Vec<Variant>,
}

impl Overhead {
    pub async fn new(opts: &Opts) -> Result<Self, String> {
        let backend = backend::start(Duration::ZERO).await;
        let haproxy = Arc::new(HaProxy::start_1hop(&opts.sidecar_kit, backend.addr)?);
        let hp = haproxy.clone();
        let (backend_uri, hop_uri) = (
            format!("http://{}/", backend.addr),
            format!("http://{}/", haproxy.listen),
        );
        let endpoint = backend.addr;
        let variants = vec![
            per_run(
                "raw",
                move || targets::Raw::new(&backend_uri),
                Arc::new(no_external),
            ),
            per_run(
                "mesh",
                move || {
                    targets::Mesh::new(
                        mesh_client(vec![Endpoint::new(endpoint)], LbPolicy::default()),
                        "http://bench.backend:8080/",
                    )
                },
                Arc::new(no_external),
            ),
            per_run(
                "haproxy",
                move || targets::Raw::new(&hop_uri),
                Arc::new(move || hp.cpu()),
            ),
        ];
        Ok(Self {
            _backend: backend,
            _haproxy: haproxy,
            variants,
        })
    }

    pub fn checks(rows: &[Row]) -> Vec<Check> {
        let mut out = Vec::new();
        let (Some(raw32), Some(mesh32), Some(hp32)) = (
            find(rows, "raw", 32),
            find(rows, "mesh", 32),
            find(rows, "haproxy", 32),
        ) else {
            return out;
        };
        let ratio = mesh32.rps / raw32.rps;
        out.push(Check::new(
            "mesh >= 0.90x raw rps at c32",
            format!("{ratio:.3}x"),
            ratio >= 0.90,
        ));
        let mesh_cost = 1e6 / mesh32.rps - 1e6 / raw32.rps;
        let hop_cost = 1e6 / hp32.rps - 1e6 / raw32.rps;
        out.push(Check::new(
            "(1/mesh - 1/raw) <= 1/3 (1/haproxy - 1/raw) at c32",
            format!(
                "mesh adds {mesh_cost:.2} us/req, the hop adds {hop_cost:.2} us/req: {:.2} of it (limit 0.33)",
                mesh_cost / hop_cost
            ),
            mesh_cost <= hop_cost / 3.0,
        ));
        if let (Some(raw1), Some(mesh1), Some(hp1)) = (
            find(rows, "raw", 1),
            find(rows, "mesh", 1),
            find(rows, "haproxy", 1),
        ) {
            let added = mesh1.p50_us - raw1.p50_us;
            let hop_added = hp1.p50_us - raw1.p50_us;
            out.push(Check::new(
                "mesh p50 <= raw p50 + 10 us at c1",
                format!("+{added:.1} us"),
                added <= 10.0,
            ));
            out.push(Check::new(
                "mesh added p50 <= 1/2 haproxy added p50 at c1",
                format!("+{added:.1} us vs +{hop_added:.1} us"),
                added <= hop_added / 2.0,
            ));
        }
        out
    }
}

/// Service times of the `lb` backends: three fast, one ten times slower (kept precisely, see
/// `backend.rs`).
pub const FAST: Duration = Duration::from_millis(1);
pub const SLOW: Duration = Duration::from_millis(10);

/// `lb`: four backends, one 10x slower; P2C Peak-EWMA vs round robin vs an oracle that only
/// knows the fast three.
pub struct Lb {
    _backends: Vec<backend::Backend>,
    pub variants: Vec<Variant>,
}

impl Lb {
    pub async fn new() -> Self {
        let mut backends = Vec::new();
        for _ in 0..3 {
            backends.push(backend::start(FAST).await);
        }
        backends.push(backend::start(SLOW).await);
        let all: Vec<Endpoint> = backends.iter().map(|b| Endpoint::new(b.addr)).collect();
        let fast: Vec<Endpoint> = all[..3].to_vec();
        let slow_hits = backends[3].hits.clone();
        let balanced = |name: &str, endpoints: Vec<Endpoint>, policy: LbPolicy| {
            per_run_counting(
                name,
                move || {
                    targets::Mesh::new(
                        mesh_client(endpoints.clone(), policy.clone()),
                        "http://bench.backend:8080/",
                    )
                },
                Arc::new(no_external),
                Some(slow_hits.clone()),
            )
        };
        let variants = vec![
            balanced("p2c-ewma", all.clone(), LbPolicy::default()),
            balanced("round-robin", all, LbPolicy::RoundRobin),
            balanced("oracle", fast, LbPolicy::default()),
        ];
        Self {
            _backends: backends,
            variants,
        }
    }

    pub fn checks(rows: &[Row]) -> Vec<Check> {
        let mut out = Vec::new();
        let (Some(p2c), Some(rr), Some(oracle)) = (
            find(rows, "p2c-ewma", 16),
            find(rows, "round-robin", 16),
            find(rows, "oracle", 16),
        ) else {
            return out;
        };
        out.push(Check::new(
            "p2c-ewma p99 <= 1.3x oracle p99",
            format!(
                "{:.0} us vs {:.0} us: {:.2}x",
                p2c.p99_us,
                oracle.p99_us,
                p2c.p99_us / oracle.p99_us
            ),
            p2c.p99_us <= 1.3 * oracle.p99_us,
        ));
        out.push(Check::new(
            "p2c-ewma p99 <= 0.2x round-robin p99",
            format!(
                "{:.0} us vs {:.0} us: {:.2}x",
                p2c.p99_us,
                rr.p99_us,
                p2c.p99_us / rr.p99_us
            ),
            p2c.p99_us <= 0.2 * rr.p99_us,
        ));
        out
    }
}
