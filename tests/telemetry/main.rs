//! Telemetry against real hyper servers on loopback: counters under a scripted sequence
//! (success, 503 retried, ejection, shed, authz deny) read from a real `/metrics` scrape that
//! must parse as OpenMetrics; W3C trace context across a two-hop HTTP chain; the debug
//! snapshot over `/mesh/debug` showing an ejection within a second.

#[path = "../common/mod.rs"]
mod common;
mod counters;
#[path = "../common/openmetrics.rs"]
mod openmetrics;
mod trace;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Backend, BackendOpts, backend, backend_with, get, round_robin, switchable};
use http_body_util::{BodyExt, Empty, Full};
use mesh::{
    core::{
        Endpoint, Mesh, ServiceConfig,
        authz::{Action, AuthorizationPolicy, Authorizer, Operation, Rule, To},
        discover::StaticSource,
        limit::LimitPolicy,
        outlier::OutlierDetection,
        retry::RetryPolicy,
        telemetry::{Registry, Telemetry},
        trace_context::TraceContext,
    },
    hyper::{
        ClientSettings, MeshClient,
        admin::AdminService,
        server::{Acceptor, AuthzLayer, MetricsLayer, TraceContextLayer, serve},
    },
};
use tower::ServiceBuilder;

const SVC: &str = "reviews.test:9080";
const URI: &str = "http://reviews.test:9080/";
const SLOW: &str = "slow.test:9080";

fn settings(telemetry: &Telemetry) -> ClientSettings {
    ClientSettings {
        telemetry: Some(telemetry.clone()),
        ..ClientSettings::default()
    }
}

/// Serves `svc` on a free loopback port with the mesh's server loop.
async fn spawn_server<S, B>(acceptor: Acceptor, svc: S) -> SocketAddr
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, acceptor, svc));
    addr
}

async fn serve_admin(registry: Registry, telemetry: Telemetry) -> SocketAddr {
    let admin = AdminService::new(Arc::new(registry), telemetry);
    spawn_server(Acceptor::plaintext(), admin).await
}

/// A plain (non-mesh) GET to the admin port.
async fn fetch(addr: SocketAddr, path: &str) -> (http::StatusCode, String, String) {
    let client = MeshClient::<Empty<Bytes>>::new(Mesh::builder().build().unwrap());
    let rsp = client
        .request(get(&format!("http://{addr}{path}")))
        .await
        .unwrap();
    let status = rsp.status();
    let ctype = rsp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

async fn scrape(addr: SocketAddr) -> openmetrics::Exposition {
    let (status, ctype, body) = fetch(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    openmetrics::parse(&body).unwrap_or_else(|e| panic!("invalid OpenMetrics: {e}\n{body}"))
}

/// A mesh-hyper server with authorization recording into `telemetry`: `/public` for anyone,
/// everything else denied.
async fn authz_server(telemetry: &Telemetry) -> SocketAddr {
    let authz = Authorizer::new(vec![AuthorizationPolicy {
        name: "public-only".into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![],
            to: vec![To {
                operation: Operation {
                    paths: vec!["/public".into()],
                    methods: vec![],
                },
            }],
        }],
    }])
    .unwrap();
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
    });
    let svc = ServiceBuilder::new()
        .layer(AuthzLayer::new(Arc::new(authz)).with_telemetry(telemetry.clone()))
        .service(app);
    spawn_server(Acceptor::plaintext(), svc).await
}

#[tokio::test]
async fn counters_follow_a_scripted_sequence() {
    common::trace();
    let (good, bad): (Backend, _) = (backend("good").await, switchable("bad").await);
    let (bad, switch) = bad;
    let slow = backend_with(BackendOpts {
        delay: Duration::from_millis(300),
        ..BackendOpts::named("slow")
    })
    .await;
    let mesh = Mesh::builder()
        .service_with(
            SVC,
            StaticSource::new(vec![Endpoint::new(good.addr), Endpoint::new(bad.addr)]).unwrap(),
            round_robin(),
        )
        .service_with(
            SLOW,
            StaticSource::new(vec![Endpoint::new(slow.addr)]).unwrap(),
            ServiceConfig {
                destination: mesh::core::DestinationPolicy {
                    limits: LimitPolicy {
                        max_concurrent_requests: Some(1),
                        max_pending_requests: 0,
                        ..LimitPolicy::default()
                    },
                    ..Default::default()
                },
                ..ServiceConfig::default()
            },
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    telemetry.track_mesh(&mesh);
    let server = authz_server(&telemetry).await;
    let admin = serve_admin(registry, telemetry.clone()).await;
    let client = MeshClient::<Empty<Bytes>>::with_settings(mesh, settings(&telemetry));
    let svc = [("service", SVC)];
    let requests = |m: &openmetrics::Exposition, status: &str, outcome: &str| {
        m.get(
            "mesh_client_requests_total",
            &[("service", SVC), ("status", status), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };

    // 1. Four successes.
    for _ in 0..4 {
        assert_eq!(client.request(get(URI)).await.unwrap().status(), 200);
    }
    let m = scrape(admin).await;
    assert_eq!(requests(&m, "2xx", "success"), 4.0);
    assert_eq!(
        m.get("mesh_client_response_latency_seconds_count", &svc),
        Some(4.0)
    );
    assert_eq!(m.get("mesh_client_retries_total", &svc), Some(0.0));
    assert_eq!(m.sum("mesh_endpoint_ejections_total", &svc), 0.0);
    assert_eq!(m.get("mesh_discovery_updates_total", &svc), Some(1.0));

    // 2. `bad` answers 503: every request that reaches it is retried on `good` and succeeds.
    switch.store(503, Ordering::SeqCst);
    let hits_before = bad.hits();
    for _ in 0..2 {
        assert_eq!(client.request(get(URI)).await.unwrap().status(), 200);
    }
    let failed = (bad.hits() - hits_before) as f64;
    assert!(failed >= 1.0);
    let m = scrape(admin).await;
    assert_eq!(requests(&m, "2xx", "success"), 6.0);
    assert_eq!(m.get("mesh_client_retries_total", &svc), Some(failed));
    assert_eq!(requests(&m, "5xx", "failure"), 0.0);

    // 3. Keep failing: five consecutive 503s eject `bad` (every request still succeeds).
    for _ in 0..12 {
        assert_eq!(client.request(get(URI)).await.unwrap().status(), 200);
    }
    let m = scrape(admin).await;
    let bad_ep = [("service", SVC), ("endpoint", &*bad.addr.to_string())];
    assert_eq!(m.get("mesh_endpoint_ejections_total", &bad_ep), Some(1.0));
    let ejected = [
        ("service", SVC),
        ("endpoint", &*bad.addr.to_string()),
        ("state", "ejected"),
    ];
    assert_eq!(m.get("mesh_endpoint_state", &ejected), Some(1.0));
    // Five failed attempts, each retried; none since the ejection.
    assert_eq!(bad.hits() - hits_before, 5);
    assert_eq!(m.get("mesh_client_retries_total", &svc), Some(5.0));
    assert_eq!(requests(&m, "2xx", "success"), 18.0);

    // 4. Shed: one slow request holds the only slot; the next one is refused at once.
    let slow_uri = format!("http://{SLOW}/");
    let first = tokio::spawn({
        let client = client.clone();
        let uri = slow_uri.clone();
        async move { client.request(get(&uri)).await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = client.request(get(&slow_uri)).await.unwrap_err();
    assert!(shed.to_string().contains("slow.test"), "{shed}");
    assert_eq!(first.await.unwrap().unwrap(), 200);
    let m = scrape(admin).await;
    let slow_svc = [("service", SLOW)];
    assert_eq!(m.get("mesh_client_shed_total", &slow_svc), Some(1.0));
    assert_eq!(
        m.get(
            "mesh_client_requests_total",
            &[
                ("service", SLOW),
                ("status", "overloaded"),
                ("outcome", "error")
            ]
        ),
        Some(1.0)
    );

    // 5. Authorization: one allowed and two denied plaintext requests, counted by the server.
    let plain = MeshClient::<Empty<Bytes>>::new(Mesh::builder().build().unwrap());
    for (path, status) in [("/public", 200), ("/admin", 403), ("/secret", 403)] {
        let rsp = plain
            .request(get(&format!("http://{server}{path}")))
            .await
            .unwrap();
        assert_eq!(rsp.status(), status, "{path}");
    }
    let m = scrape(admin).await;
    let server_requests = |decision| {
        m.get(
            "mesh_server_requests_total",
            &[("caller", "none"), ("decision", decision)],
        )
    };
    assert_eq!(server_requests("allow"), Some(1.0));
    assert_eq!(server_requests("deny"), Some(2.0));

    // The mesh's configuration sources (none here: static services) and the families' types.
    assert_eq!(
        m.types.get("mesh_client_requests").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        m.types
            .get("mesh_client_response_latency_seconds")
            .map(String::as_str),
        Some("histogram")
    );
}

#[tokio::test]
async fn the_debug_snapshot_shows_an_ejection_within_a_second() {
    let good = backend("good").await;
    let (bad, switch) = switchable("bad").await;
    switch.store(503, Ordering::SeqCst);
    let mut config = round_robin();
    config.destination.balance.outlier_detection = Some(OutlierDetection {
        base_ejection_time: Duration::from_millis(300),
        ..OutlierDetection::default()
    });
    let mesh = Mesh::builder()
        .service_with(
            SVC,
            StaticSource::new(vec![Endpoint::new(good.addr), Endpoint::new(bad.addr)]).unwrap(),
            config,
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    let admin = serve_admin(registry, telemetry.clone()).await;
    let client = MeshClient::<Empty<Bytes>>::with_settings(mesh, settings(&telemetry));

    // Drive requests until `bad` has failed five times in a row, then time the snapshot.
    let mut sent = 0;
    while bad.hits() < 5 && sent < 100 {
        client.request(get(URI)).await.unwrap();
        sent += 1;
    }
    assert_eq!(
        bad.hits(),
        5,
        "bad was not tried five times in {sent} requests"
    );
    let ejected_at = Instant::now();
    let mut seen = None;
    while ejected_at.elapsed() < Duration::from_secs(1) {
        let (status, ctype, body) = fetch(admin, "/mesh/debug").await;
        assert_eq!((status.as_u16(), ctype.as_str()), (200, "application/json"));
        let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
        let dest = &snap["destinations"][0];
        assert_eq!(dest["service"], SVC);
        let endpoint = dest["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["addr"] == bad.addr.to_string())
            .cloned()
            .unwrap();
        if endpoint["health"] == "ejected" {
            seen = Some((ejected_at.elapsed(), endpoint, dest.clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (after, endpoint, dest) = seen.expect("the snapshot did not show the ejection within 1 s");
    assert!(after < Duration::from_secs(1));
    // The rest of what the snapshot promises: next probe time, budget, discovery version...
    assert!(endpoint["probe_in"].is_string(), "{endpoint}");
    assert_eq!(endpoint["ejections"], 1);
    assert!(dest["retry_budget"].as_f64().unwrap() > 0.0);
    assert!(dest["discovery"]["version"].as_u64().unwrap() >= 1);
    // ... and the EWMA latency once an endpoint is past its warm-up (ten answers).
    for _ in 0..10 {
        client.request(get(URI)).await.unwrap();
    }
    let snap = telemetry.snapshot();
    let good_ep = snap.destinations[0]
        .endpoints
        .iter()
        .find(|e| e.addr == good.addr)
        .unwrap();
    assert!(good_ep.ewma_latency.is_some(), "{good_ep:?}");
    assert!(
        good_ep.responses.0 >= 10 && good_ep.responses.1 == 0,
        "{good_ep:?}"
    );

    // Recovered: after the ejection time one probe re-admits it, which both outputs show.
    switch.store(200, Ordering::SeqCst);
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            client.request(get(URI)).await.unwrap();
            telemetry.snapshot().destinations[0]
                .endpoints
                .iter()
                .any(|e| e.addr == bad.addr && e.readmissions == 1)
        })
        .await,
        "no re-admission"
    );
    let m = scrape(admin).await;
    let bad_ep = [("service", SVC), ("endpoint", &*bad.addr.to_string())];
    assert_eq!(
        m.get("mesh_endpoint_readmissions_total", &bad_ep),
        Some(1.0)
    );
    let failures = [
        ("service", SVC),
        ("endpoint", &*bad.addr.to_string()),
        ("outcome", "failure"),
    ];
    assert_eq!(m.get("mesh_endpoint_responses_total", &failures), Some(5.0));
}
