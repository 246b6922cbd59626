//! Telemetry against real hyper servers on loopback: counters under a scripted sequence
//! (success, 503 retried, ejection, shed, authz deny) read from a real `/metrics` scrape that
//! must parse as OpenMetrics; W3C trace context across a two-hop HTTP chain; the debug
//! snapshot over `/mesh/debug` showing an ejection within a second.

mod common;
#[path = "common/openmetrics.rs"]
mod openmetrics;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Backend, BackendOpts, backend, backend_with, get, switchable};
use http_body_util::{BodyExt, Empty, Full};
use mesh::{
    core::{
        BalanceConfig, Endpoint, LbPolicy, Mesh, ServiceConfig,
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

fn round_robin() -> ServiceConfig {
    ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            balance: BalanceConfig {
                policy: LbPolicy::RoundRobin,
                ..BalanceConfig::default()
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
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

/// A mesh client whose service `c.test:80` is the one endpoint `c`.
fn client_of_c(c: SocketAddr) -> MeshClient<Empty<Bytes>> {
    let mesh = Mesh::builder()
        .service(
            "c.test:80",
            StaticSource::new(vec![Endpoint::new(c)]).unwrap(),
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::new(mesh)
}

/// A last hop that records `traceparent` and `tracestate`.
async fn hop_with_state(seen: Arc<Mutex<Vec<String>>>, state: Arc<Mutex<String>>) -> SocketAddr {
    let app = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (seen, state) = (seen.clone(), state.clone());
        async move {
            let header = |n: &str| {
                req.headers()
                    .get(n)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            seen.lock().unwrap().push(header("traceparent"));
            *state.lock().unwrap() = header("tracestate");
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
        }
    });
    spawn_server(Acceptor::plaintext(), app).await
}

/// A hyper server that records the `traceparent` it receives and, if `downstream` is set,
/// calls it through a mesh client while handling the request (with no tracing code).
async fn hop(
    seen: Arc<Mutex<Vec<String>>>,
    downstream: Option<(MeshClient<Empty<Bytes>>, String)>,
) -> SocketAddr {
    let app = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        let downstream = downstream.clone();
        async move {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(tp);
            if let Some((client, uri)) = downstream {
                client.request(get(&uri)).await.unwrap();
            }
            // This hop's own context, as the server layer set it.
            let own = TraceContext::current().map(|c| c.trace_id().to_string());
            let mut rsp = http::Response::new(Full::new(Bytes::from("ok")));
            rsp.headers_mut()
                .insert("x-trace-id", own.unwrap_or_default().parse().unwrap());
            Ok::<_, Infallible>(rsp)
        }
    });
    let svc = ServiceBuilder::new()
        .layer(TraceContextLayer::new())
        .service(app);
    spawn_server(Acceptor::plaintext(), svc).await
}

#[tokio::test]
async fn trace_context_crosses_a_two_hop_http_chain() {
    // C records; B records and calls C through a mesh client; the test calls B.
    let (at_b, at_c) = (Arc::default(), Arc::default());
    let seen_state_c: Arc<Mutex<String>> = Arc::default();
    let c = hop_with_state(Arc::clone(&at_c), Arc::clone(&seen_state_c)).await;
    let b = hop(
        Arc::clone(&at_b),
        Some((client_of_c(c), "http://c.test/work".into())),
    )
    .await;
    let plain = MeshClient::<Empty<Bytes>>::with_settings(
        Mesh::builder().build().unwrap(),
        ClientSettings {
            trace_context: false,
            ..ClientSettings::default()
        },
    );

    // With a traceparent: C sees the same trace, as a child of B's hop (a new parent id).
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = get(&format!("http://{b}/"));
    req.headers_mut()
        .insert("traceparent", http::HeaderValue::from_static(sent));
    req.headers_mut()
        .insert("tracestate", http::HeaderValue::from_static("vendor=x"));
    assert_eq!(plain.request(req).await.unwrap().status(), 200);
    let seen_b = at_b.lock().unwrap().pop().unwrap();
    let seen_c = at_c.lock().unwrap().pop().unwrap();
    assert_eq!(seen_b, sent);
    let c_ctx = TraceContext::parse(&seen_c, None).unwrap();
    assert_eq!(
        *seen_state_c.lock().unwrap(),
        "vendor=x",
        "tracestate is passed on"
    );
    let sent_ctx = TraceContext::parse(sent, None).unwrap();
    assert_eq!(c_ctx.trace_id(), sent_ctx.trace_id(), "C saw {seen_c}");
    assert_ne!(
        c_ctx.span_id(),
        sent_ctx.span_id(),
        "C's parent must be B's hop"
    );
    assert!(c_ctx.sampled());

    // Without one: B starts a trace, and C continues it.
    let rsp = plain.request(get(&format!("http://{b}/"))).await.unwrap();
    let b_trace = rsp.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(at_b.lock().unwrap().pop().unwrap(), "");
    let first = TraceContext::parse(&at_c.lock().unwrap().pop().unwrap(), None).unwrap();
    assert_eq!(
        first.trace_id().to_string(),
        b_trace,
        "C must continue B's new trace"
    );
    plain.request(get(&format!("http://{b}/"))).await.unwrap();
    let second = TraceContext::parse(&at_c.lock().unwrap().pop().unwrap(), None).unwrap();
    assert_ne!(
        first.trace_id(),
        second.trace_id(),
        "each request is its own trace"
    );

    // A mesh client outside any handler starts a trace per request.
    let direct = MeshClient::<Empty<Bytes>>::new(Mesh::builder().build().unwrap());
    direct.request(get(&format!("http://{c}/"))).await.unwrap();
    let root = at_c.lock().unwrap().pop().unwrap();
    assert!(TraceContext::parse(&root, None).is_ok(), "{root:?}");
}

#[tokio::test]
async fn a_streaming_response_body_continues_the_trace() {
    // B answers at once with a body whose only chunk is produced after a call to C: the call
    // is made while hyper polls the body, after the handler's future has finished.
    let at_c: Arc<Mutex<Vec<String>>> = Arc::default();
    let c = hop_with_state(Arc::clone(&at_c), Arc::default()).await;
    let client = client_of_c(c);
    let app = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let client = client.clone();
        async move {
            let chunk = futures_util::stream::once(async move {
                client.request(get("http://c.test/")).await.unwrap();
                Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from("streamed")))
            });
            Ok::<_, Infallible>(http::Response::new(http_body_util::StreamBody::new(chunk)))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(TraceContextLayer::new())
        .service(app);
    let b = spawn_server(Acceptor::plaintext(), svc).await;

    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = get(&format!("http://{b}/"));
    req.headers_mut()
        .insert("traceparent", http::HeaderValue::from_static(sent));
    let plain = MeshClient::<Empty<Bytes>>::new(Mesh::builder().build().unwrap());
    let body = plain.request(req).await.unwrap().into_body();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "streamed");
    let seen = TraceContext::parse(&at_c.lock().unwrap().pop().unwrap(), None).unwrap();
    assert_eq!(
        seen.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
}

#[tokio::test]
async fn config_reloads_rejections_and_unroutable_requests_are_counted() {
    let a = backend("a").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    let good = format!("services:\n  {SVC}:\n    - address: {}\n", a.addr);
    std::fs::write(&path, &good).unwrap();
    let mesh = Mesh::builder()
        .endpoints_file(&path, ServiceConfig::default())
        .without_dns_fallback()
        .build()
        .unwrap();
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    let admin = serve_admin(registry, telemetry.clone()).await;
    // The client tracks its mesh by itself.
    let client = MeshClient::<Empty<Bytes>>::with_settings(mesh, settings(&telemetry));
    assert_eq!(client.request(get(URI)).await.unwrap().status(), 200);
    let path_label = path.display().to_string();
    let reloads = |m: &openmetrics::Exposition, result: &str| {
        m.get(
            "mesh_config_reloads_total",
            &[
                ("source", "endpoints-file"),
                ("path", &path_label),
                ("result", result),
            ],
        )
    };
    let m = scrape(admin).await;
    assert_eq!(reloads(&m, "ok"), Some(1.0));
    assert_eq!(reloads(&m, "rejected"), Some(0.0));

    // A bad update is rejected (the old endpoints keep serving) and shows in both outputs.
    std::fs::write(
        &path,
        format!("services:\n  {SVC}:\n    - address: nowhere\n"),
    )
    .unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            telemetry.snapshot().config[0].rejections == 1
        })
        .await,
        "the rejection was not counted"
    );
    assert_eq!(client.request(get(URI)).await.unwrap().status(), 200);
    let snap = telemetry.snapshot();
    let err = snap.config[0].last_error.clone().unwrap();
    assert!(err.contains("address"), "{err}");
    let m = scrape(admin).await;
    assert_eq!(reloads(&m, "rejected"), Some(1.0));
    assert_eq!(
        m.get("mesh_discovery_errors_total", &[("service", SVC)]),
        Some(1.0)
    );

    // Fixed again: a new version, and the rejection stays among the recent errors.
    std::fs::write(&path, &good).unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            telemetry.snapshot().config[0].version == 2
        })
        .await
    );
    let snap = telemetry.snapshot();
    assert!(snap.config[0].last_error.is_none());
    assert_eq!(snap.config[0].recent_errors.len(), 1);

    // A request to a service nobody knows (no DNS fallback) is counted as unroutable.
    assert!(client.request(get("http://nobody.test/")).await.is_err());
    let m = scrape(admin).await;
    assert_eq!(
        m.get("mesh_client_unroutable_total", &[("reason", "resolve")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn tls_handshakes_are_counted_by_side_and_failure_reason() {
    let pki = common::pki::Pki::new();
    let server_store = pki.store("reviews", "reviews");
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
    });
    let acceptor = Acceptor::new(
        Some(server_store.clone()),
        mesh::core::tls::ServerTlsMode::Strict,
    )
    .unwrap();
    let server = spawn_server(acceptor, app).await;
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    telemetry.track_tls(&server_store);
    let admin = serve_admin(registry, telemetry.clone()).await;
    let client_store = pki.store("productpage", "productpage");
    let client_for = |expected: &str| {
        let mesh = Mesh::builder()
            .service(
                SVC,
                StaticSource::new(vec![
                    Endpoint::new(server).identity(common::pki::id(expected)),
                ])
                .unwrap(),
            )
            .without_dns_fallback()
            .build()
            .unwrap();
        MeshClient::<Empty<Bytes>>::with_settings(
            mesh,
            ClientSettings {
                tls: Some(client_store.clone()),
                ..settings(&telemetry)
            },
        )
    };
    // One good handshake, then a client expecting another identity refuses the server.
    assert_eq!(
        client_for("reviews")
            .request(get(URI))
            .await
            .unwrap()
            .status(),
        200
    );
    let refused = client_for("ratings").request(get(URI)).await.unwrap_err();
    assert!(
        matches!(refused, mesh::hyper::Error::IdentityMismatch { .. }),
        "{refused:?}"
    );

    let m = scrape(admin).await;
    let client_id = common::pki::id("productpage").to_string();
    let server_id = common::pki::id("reviews").to_string();
    let handshakes = |id: &str, side: &str, result: &str| {
        m.get(
            "mesh_tls_handshakes_total",
            &[("identity", id), ("side", side), ("result", result)],
        )
    };
    assert_eq!(handshakes(&client_id, "client", "ok"), Some(1.0));
    assert!(
        handshakes(&client_id, "client", "identity_mismatch").unwrap_or(0.0) >= 1.0,
        "{:?}",
        telemetry.snapshot().tls
    );
    assert_eq!(handshakes(&server_id, "server", "ok"), Some(1.0));
    // The refused server saw the client abort with an alert.
    assert!(handshakes(&server_id, "server", "peer_alert").unwrap_or(0.0) >= 1.0);
}

#[tokio::test]
async fn servers_count_inbound_requests_by_caller_identity_and_status() {
    // An mTLS server with the metrics layer outermost: answered, failed and denied requests
    // are all counted under the caller's verified SPIFFE ID.
    let pki = common::pki::Pki::new();
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    let authz = Authorizer::new(vec![AuthorizationPolicy {
        name: "public-and-fail".into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![],
            to: vec![To {
                operation: Operation {
                    paths: vec!["/public".into(), "/fail".into()],
                    methods: vec![],
                },
            }],
        }],
    }])
    .unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let mut rsp = http::Response::new(Full::new(Bytes::from("ok")));
        if req.uri().path() == "/fail" {
            *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        Ok::<_, Infallible>(rsp)
    });
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer::new(telemetry.clone()))
        .layer(AuthzLayer::new(Arc::new(authz)).with_telemetry(telemetry.clone()))
        .service(app);
    let acceptor = Acceptor::new(
        Some(pki.store("reviews", "reviews")),
        mesh::core::tls::ServerTlsMode::Strict,
    )
    .unwrap();
    let server = spawn_server(acceptor, svc).await;
    let admin = serve_admin(registry, telemetry.clone()).await;
    let mesh = Mesh::builder()
        .service_with(
            SVC,
            StaticSource::new(vec![
                Endpoint::new(server).identity(common::pki::id("reviews")),
            ])
            .unwrap(),
            ServiceConfig {
                route: mesh::core::RoutePolicy {
                    retries: RetryPolicy::disabled(),
                    ..Default::default()
                },
                ..ServiceConfig::default()
            },
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::<Empty<Bytes>>::with_settings(
        mesh,
        ClientSettings {
            tls: Some(pki.store("productpage", "productpage")),
            ..ClientSettings::default()
        },
    );
    for (path, status) in [
        ("/public", 200),
        ("/public", 200),
        ("/fail", 503),
        ("/private", 403),
    ] {
        let rsp = client
            .request(get(&format!("http://{SVC}{path}")))
            .await
            .unwrap();
        assert_eq!(rsp.status(), status, "{path}");
        rsp.into_body().collect().await.unwrap();
    }

    let caller = common::pki::id("productpage").to_string();
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            telemetry
                .snapshot()
                .inbound
                .iter()
                .all(|c| c.in_flight == 0)
        })
        .await
    );
    let m = scrape(admin).await;
    let responses = |status: &str, outcome: &str| {
        m.get(
            "mesh_server_responses_total",
            &[
                ("caller", caller.as_str()),
                ("status", status),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(responses("2xx", "success"), Some(2.0));
    assert_eq!(responses("5xx", "failure"), Some(1.0));
    assert_eq!(responses("4xx", "success"), Some(1.0), "the denial");
    assert_eq!(
        m.get(
            "mesh_server_response_latency_seconds_count",
            &[("caller", caller.as_str())]
        ),
        Some(4.0)
    );
    assert_eq!(
        m.get("mesh_server_in_flight", &[("caller", caller.as_str())]),
        Some(0.0)
    );
    assert_eq!(
        m.get(
            "mesh_server_requests_total",
            &[("caller", caller.as_str()), ("decision", "deny")]
        ),
        Some(1.0)
    );
}
