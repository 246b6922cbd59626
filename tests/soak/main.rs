//! The soak: five mTLS backends (real processes) killed and restarted at random intervals
//! while the routes are reloaded every few seconds and every certificate is rotated once,
//! under continuous load. Success must stay ≥ 99.9 %, every failure typed and counted, and
//! nothing may leak: open file descriptors, tokio tasks and RSS at the end within a small bound
//! of the start (read from `/proc/self`; this test is alone in its binary so that nothing else
//! moves them).
//!
//! `MESH_SOAK_SECS` sets the length (default 15 s; the full soak is `MESH_SOAK_SECS=60`).

#[path = "../faults/child.rs"]
mod child;
#[path = "../common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use child::Child;
use common::pki::{Pki, id};
use mesh::{
    core::{
        Mesh,
        classify::{Classify, FailureKind, ResponseClass},
        tls::{TlsSettings, TlsStore},
    },
    hyper::{ClientSettings, HttpClassifier, MeshClient},
};

const URI: &str = "http://reviews.default:9080/";

const DR: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 1s, maxEjectionPercent: 40}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn vs(v1: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - retries: {{attempts: 2, perTryTimeout: 1s, retryOn: "5xx,reset,connect-failure,refused-stream"}}
    route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {}}}
"#,
        100 - v1
    )
}

/// Writes `text` to `path` atomically (as deploy tools and ConfigMaps do).
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Open file descriptors, tokio tasks alive, resident memory in KiB.
fn usage() -> (usize, usize, u64) {
    let (fds, rss) = child::proc_usage("self");
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    (fds, tasks, rss)
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failures: BTreeMap<String, u64>,
    untyped: Vec<String>,
}

#[test]
fn backends_killed_routes_reloaded_and_certificates_rotated_under_load() {
    let secs: u64 = std::env::var("MESH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(soak(Duration::from_secs(secs)));
}

async fn soak(length: Duration) {
    let pki = Pki::new();
    let files: Vec<_> = (0..5)
        .map(|i| pki.workload(&format!("c{i}"), "reviews"))
        .collect();
    let kids: Vec<Child> = files
        .iter()
        .enumerate()
        .map(|(i, f)| Child::spawn_tls(&format!("c{i}"), f.clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut eps = String::from("services:\n  reviews.default:9080:\n");
    for (i, k) in kids.iter().enumerate() {
        let version = if i < 3 { "v1" } else { "v2" };
        eps.push_str(&format!(
            "    - {{address: {}, labels: {{version: {version}}}, identity: {}}}\n",
            k.addr,
            id("reviews")
        ));
    }
    std::fs::write(dir.path().join("endpoints.yaml"), eps).unwrap();
    let istio = dir.path().join("istio");
    std::fs::create_dir(&istio).unwrap();
    std::fs::write(istio.join("destination-rule.yaml"), DR).unwrap();
    write_atomic(&istio.join("virtual-service.yaml"), &vs(50));
    let client_files = pki.workload("client", "productpage");
    let client_store = TlsStore::load(client_files.clone(), TlsSettings::default()).unwrap();
    let mesh = Mesh::builder()
        .endpoints_file(dir.path().join("endpoints.yaml"), Default::default())
        .istio_config(&istio)
        .without_dns_fallback()
        .build()
        .unwrap();
    let client: MeshClient<http_body_util::Empty<bytes::Bytes>> = MeshClient::with_settings(
        mesh.clone(),
        ClientSettings {
            tls: Some(client_store.clone()),
            ..ClientSettings::default()
        },
    );

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, tally) = (client.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let bound = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < bound {
                    let r = client.request(common::get(URI)).await;
                    let mut t = tally.lock().unwrap();
                    match r {
                        Ok(rsp) if rsp.status().is_success() => t.ok += 1,
                        Ok(rsp) => {
                            *t.failures
                                .entry(format!("status {}", rsp.status()))
                                .or_default() += 1
                        }
                        Err(e) => {
                            let kind =
                                match HttpClassifier.classify(Err::<&http::Response<()>, _>(&e)) {
                                    ResponseClass::Failure(k) => k,
                                    ResponseClass::Success => unreachable!(),
                                };
                            if kind == FailureKind::Other {
                                t.untyped.push(e.to_string());
                            }
                            *t.failures.entry(format!("{kind}")).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    // Warm up (connections to every backend), then take the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = usage();

    let kids = Arc::new(Mutex::new(kids));
    let began = Instant::now();
    let (mut restarts, mut reloads, mut rotated) = (0, 0, false);
    let mut next_reload = began + Duration::from_millis(2500);
    let weights = [100, 50, 0, 80, 20];
    while began.elapsed() < length {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        let victim = fastrand::usize(0..5);
        let kids = kids.clone();
        tokio::task::spawn_blocking(move || kids.lock().unwrap()[victim].restart())
            .await
            .unwrap();
        restarts += 1;
        if Instant::now() >= next_reload {
            reloads += 1;
            write_atomic(
                &istio.join("virtual-service.yaml"),
                &vs(weights[reloads % weights.len()]),
            );
            next_reload += Duration::from_millis(2500);
        }
        if !rotated && began.elapsed() >= length / 2 {
            // New certificates for every workload, from the same CA; key first, then chain.
            for (i, f) in files.iter().chain([&client_files]).enumerate() {
                let cert = pki
                    .ca
                    .issue(
                        id(if i < 5 { "reviews" } else { "productpage" }),
                        &["localhost", "127.0.0.1"],
                        1,
                    )
                    .unwrap();
                std::fs::write(&f.key, &cert.key_pem).unwrap();
                std::fs::write(&f.cert_chain, &cert.chain_pem).unwrap();
            }
            rotated = true;
        }
    }
    let rotated_ok = common::eventually(Duration::from_secs(10), async || {
        client_store.reloads() >= 1
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    // Let connections to killed processes and idle ones settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = usage();
    let t = tally.lock().unwrap();
    let total = t.ok + t.failures.values().sum::<u64>();
    let success = t.ok as f64 / total.max(1) as f64;
    println!(
        "soak {:.0} s: {} requests, {:.3} % succeeded; failures by kind {:?}; {restarts} backend \
         restarts, {reloads} route reloads, certificates rotated {}; fds {} -> {}, tasks {} -> {}, \
         RSS {} -> {} KiB",
        length.as_secs_f64(),
        total,
        success * 100.0,
        t.failures,
        if rotated_ok { "once" } else { "NOT" },
        start.0,
        end.0,
        start.1,
        end.1,
        start.2,
        end.2
    );
    assert!(
        rotated_ok,
        "the client's certificate rotation was never applied"
    );
    assert!(
        reloads >= 2 && restarts >= 5,
        "too little happened: {reloads} reloads, {restarts} restarts"
    );
    assert!(
        t.untyped.is_empty(),
        "untyped failures: {:?}",
        &t.untyped[..t.untyped.len().min(5)]
    );
    assert!(success >= 0.999, "success {:.4}: {:?}", success, t.failures);
    assert!(
        end.0 <= start.0 + 16,
        "file descriptors leaked: {} -> {}",
        start.0,
        end.0
    );
    assert!(
        end.1 <= start.1 + 16,
        "tasks leaked: {} -> {}",
        start.1,
        end.1
    );
    assert!(
        end.2 <= start.2 + 32 * 1024,
        "RSS grew: {} -> {} KiB",
        start.2,
        end.2
    );
}
