//! etcd as registry and config store, against a real etcd on loopback (feature `etcd`; run
//! with `cargo test --features etcd etcd`).

#[path = "../common/mod.rs"]
mod common;
mod lifecycle;
mod outage;
mod server;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Backend, backend, backend_of, eventually, get};
use http_body_util::Empty;
use mesh::{
    core::{
        Mesh, ServiceConfig, ServiceName,
        config::{LoadOptions, Workload},
        discover::Registry,
    },
    etcd::{
        ApplyOptions, EndpointRecord, EtcdError, EtcdRegistry, Registration, apply, open_config,
    },
    hyper::MeshClient,
};
use server::Etcd;

const SERVICES: &str = "/mesh/services/";
const CONFIG: &str = "/mesh/config/";
const URI: &str = "http://reviews.default:9080/";

fn name() -> ServiceName {
    "reviews.default:9080".parse().unwrap()
}

async fn register(etcd: &Etcd, b: &Backend, ttl: u64) -> Registration {
    let record = EndpointRecord::new(b.addr).label("version", b.name.as_str());
    Registration::register(
        &etcd.options(),
        SERVICES,
        &name(),
        &b.name,
        record,
        Duration::from_secs(ttl),
    )
    .await
    .unwrap()
}

async fn registry(etcd: &Etcd) -> EtcdRegistry {
    EtcdRegistry::connect(&etcd.options(), SERVICES)
        .await
        .unwrap()
}

fn client(
    registry: EtcdRegistry,
    store: Option<mesh::core::config::ConfigStore>,
) -> MeshClient<Empty<Bytes>> {
    let mut b = Mesh::builder()
        .registry(registry, ServiceConfig::default())
        .without_dns_fallback();
    if let Some(s) = store {
        b = b.config_store(s);
    }
    MeshClient::new(b.build().unwrap())
}

async fn served_by(c: &MeshClient<Empty<Bytes>>) -> String {
    match c.request(get(URI)).await {
        Ok(r) => backend_of(&r),
        Err(e) => format!("error: {e}"),
    }
}

const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n";

fn vs(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}\n    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}\n"
    )
}

/// Writes `text` to a file and applies it as `mesh apply` does.
async fn apply_text(etcd: &Etcd, text: &str) -> Result<mesh::etcd::Applied, EtcdError> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docs.yaml");
    std::fs::write(&f, text).unwrap();
    apply(&etcd.options(), &[f], &ApplyOptions::default()).await
}

async fn config(etcd: &Etcd) -> mesh::core::config::ConfigStore {
    open_config(
        &etcd.options(),
        CONFIG,
        Workload::new("default", []),
        LoadOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn etcd_registration_discovery_and_withdrawal_end_to_end() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let r1 = register(&etcd, &v1, 5).await;
    let reg = registry(&etcd).await;
    let c = client(reg.clone(), None);
    assert_eq!(served_by(&c).await, "v1");
    // A second instance registers: both take traffic.
    let r2 = register(&etcd, &v2, 5).await;
    assert!(
        eventually(Duration::from_secs(5), async || reg
            .endpoints(&name())
            .len()
            == 2)
        .await
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(served_by(&c).await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // A server shutting down through serve_with_settings withdraws its record first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let r3 = Registration::register(
        &etcd.options(),
        SERVICES,
        &name(),
        "v3",
        EndpointRecord::new(addr),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || reg
            .endpoints(&name())
            .len()
            == 3)
        .await
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("v3")))
    });
    let settings = mesh::hyper::server::ServerSettings::default().announce(r3);
    let server = tokio::spawn(mesh::hyper::server::serve_with_settings(
        listener,
        mesh::hyper::server::Acceptor::plaintext(),
        settings,
        svc,
        async {
            let _ = stopped.await;
        },
    ));
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), async || reg
            .endpoints(&name())
            .len()
            == 2)
        .await,
        "the shut-down server's record is gone at once, not after its 30 s lease"
    );
    r1.withdraw().await;
    assert!(
        eventually(Duration::from_secs(2), async || reg
            .endpoints(&name())
            .len()
            == 1)
        .await
    );
    for _ in 0..10 {
        assert_eq!(served_by(&c).await, "v2");
    }
    drop(r2);
}

#[tokio::test]
async fn etcd_route_change_applied_live_under_load_by_two_clients() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let _r = (
        register(&etcd, &v1, 10).await,
        register(&etcd, &v2, 10).await,
    );
    apply_text(&etcd, &format!("{DR}---\n{}", vs(100, 0)))
        .await
        .unwrap();
    let clients = [
        client(registry(&etcd).await, Some(config(&etcd).await)),
        client(registry(&etcd).await, Some(config(&etcd).await)),
    ];
    for c in &clients {
        assert_eq!(served_by(c).await, "v1");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let first_v2: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let mut loads = Vec::new();
    for c in clients.clone() {
        let (stop, failures, total, first_v2) = (
            stop.clone(),
            failures.clone(),
            total.clone(),
            first_v2.clone(),
        );
        loads.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                total.fetch_add(1, Ordering::Relaxed);
                match c.request(get(URI)).await {
                    Ok(r) if backend_of(&r) == "v2" => {
                        first_v2.lock().unwrap().get_or_insert_with(Instant::now);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let applied = apply_text(&etcd, &vs(0, 100)).await.unwrap();
    let returned = Instant::now();
    assert_eq!(
        applied.written.len(),
        1,
        "only the changed document is written"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            first_v2.lock().unwrap().is_some()
        })
        .await
    );
    let routed = first_v2.lock().unwrap().unwrap();
    println!(
        "apply returned -> first request routed by the new rule: {:.1} ms",
        routed.saturating_duration_since(returned).as_secs_f64() * 1e3
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for c in &clients {
        for _ in 0..20 {
            assert_eq!(served_by(c).await, "v2");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "of {}",
        total.load(Ordering::Relaxed)
    );
    assert!(routed.saturating_duration_since(returned) < Duration::from_millis(500));
}

#[tokio::test]
async fn etcd_apply_refuses_invalid_documents_and_writes_nothing() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    apply_text(&etcd, DR).await.unwrap();
    let before = mesh::etcd::list(&etcd.options(), CONFIG).await.unwrap();
    // An unknown subset, a zero total weight, a typo: every one refused, naming file and field.
    for (bad, field) in [
        (vs(0, 0), "weight"),
        (vs(100, 0).replace("subset: v2", "subset: v9"), "subset"),
        (vs(100, 0).replace("hosts:", "hostz:"), "hostz"),
    ] {
        let err = apply_text(
            &etcd,
            &format!(
                "{bad}---\n{}",
                vs(1, 1).replace("name: reviews", "name: other")
            ),
        )
        .await
        .unwrap_err();
        let EtcdError::Invalid(errors) = err else {
            panic!("{err}")
        };
        let text = errors.to_string();
        assert!(text.contains("docs.yaml") && text.contains(field), "{text}");
    }
    let after = mesh::etcd::list(&etcd.options(), CONFIG).await.unwrap();
    assert_eq!(before.0.len(), after.0.len());
    assert_eq!(
        before.1, after.1,
        "the revision did not move: nothing was written"
    );
}

#[tokio::test]
async fn etcd_expect_revision_refuses_a_stale_write() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let first = apply_text(&etcd, &format!("{DR}---\n{}", vs(100, 0)))
        .await
        .unwrap();
    apply_text(&etcd, &vs(50, 50)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("vs.yaml");
    std::fs::write(&f, vs(0, 100)).unwrap();
    let stale = ApplyOptions {
        expect_revision: Some(first.revision),
        ..ApplyOptions::default()
    };
    let err = apply(&etcd.options(), std::slice::from_ref(&f), &stale)
        .await
        .unwrap_err();
    assert!(matches!(err, EtcdError::Conflict { .. }), "{err}");
    let (_, now) = mesh::etcd::list(&etcd.options(), CONFIG).await.unwrap();
    let fresh = ApplyOptions {
        expect_revision: Some(now),
        ..ApplyOptions::default()
    };
    apply(&etcd.options(), &[f], &fresh).await.unwrap();
}

#[tokio::test]
async fn etcd_invalid_raw_document_rejected_by_the_watcher_old_config_kept() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let _r = (
        register(&etcd, &v1, 10).await,
        register(&etcd, &v2, 10).await,
    );
    apply_text(&etcd, &format!("{DR}---\n{}", vs(100, 0)))
        .await
        .unwrap();
    let store = config(&etcd).await;
    let c = client(registry(&etcd).await, Some(store.clone()));
    assert_eq!(served_by(&c).await, "v1");
    let version = store.version();
    // Written raw, bypassing `mesh apply`: a VirtualService with an unknown subset.
    let mut raw = etcd.options().connect().await.unwrap();
    let key = "/mesh/config/VirtualService/default/reviews";
    raw.put(key, vs(0, 100).replace("subset: v2", "subset: v7"), None)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || store.stats().rejections
            == 1)
        .await
    );
    let stats = store.stats();
    assert!(
        stats.last_error.as_deref().unwrap_or("").contains(key),
        "{stats:?}"
    );
    assert_eq!(store.version(), version, "the set in force stayed");
    for _ in 0..10 {
        assert_eq!(served_by(&c).await, "v1");
    }
    // Garbage that is not even YAML: also rejected.
    raw.put(key, "{{{ not: [yaml", None).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || store.stats().rejections
            == 2)
        .await
    );
    // A valid change then goes through.
    raw.put(key, vs(0, 100), None).await.unwrap();
    assert!(eventually(Duration::from_secs(5), async || served_by(&c).await == "v2").await);
    let state = store.remote_state().unwrap();
    assert!(state.connected && state.revision > 0, "{state:?}");
}

#[tokio::test]
async fn etcd_garbage_records_skipped_and_counted_the_rest_stays() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let v1 = backend("v1").await;
    let _r = register(&etcd, &v1, 10).await;
    let mut raw = etcd.options().connect().await.unwrap();
    raw.put(
        "/mesh/services/reviews.default:9080/garbage",
        "not json",
        None,
    )
    .await
    .unwrap();
    raw.put(
        "/mesh/services/reviews.default:9080/half",
        "{\"address\":\"127.0.0.1\",",
        None,
    )
    .await
    .unwrap();
    let reg = registry(&etcd).await;
    assert_eq!(reg.endpoints(&name()).len(), 1);
    assert_eq!(reg.remote_state().skipped_records, 2);
    // Garbage arriving through the watch: skipped too, named in the status.
    raw.put("/mesh/services/no-port/x", "{}", None)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || reg
            .remote_state()
            .skipped_records
            == 3)
        .await
    );
    let status = reg.status();
    assert!(status.last_error.unwrap().contains("/mesh/services/"));
    let c = client(reg.clone(), None);
    assert_eq!(served_by(&c).await, "v1");
}

#[tokio::test]
async fn etcd_restart_mid_load_zero_failed_requests_and_the_watch_resumes() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let _r = (
        register(&etcd, &v1, 30).await,
        register(&etcd, &v2, 30).await,
    );
    apply_text(&etcd, &format!("{DR}---\n{}", vs(100, 0)))
        .await
        .unwrap();
    let store = config(&etcd).await;
    let reg = registry(&etcd).await;
    let c = client(reg.clone(), Some(store.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (c, stop, ok, failed) = (c.clone(), stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.request(get(URI)).await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.kill();
    assert!(
        eventually(Duration::from_secs(10), async || !reg
            .remote_state()
            .connected)
        .await,
        "the registry notices the outage"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.restart().await;
    assert!(
        eventually(Duration::from_secs(15), async || reg
            .remote_state()
            .connected)
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), async || store
            .remote_state()
            .is_some_and(|s| s.connected))
        .await
    );
    assert!(reg.remote_state().reconnects >= 1);
    // The config watch resumed: a change after the restart is applied.
    apply_text(&etcd, &vs(0, 100)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || served_by(&c).await
            == "v2")
        .await
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    println!(
        "across the etcd restart: {} ok, {} failed",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(
        reg.endpoints(&name()).len(),
        2,
        "the registrations survived"
    );
}
