//! The meshed hyper client against real hyper servers on loopback: spread, weights, affinity,
//! empty services, Host/URI handling, HTTP/2, in-flight requests across discovery changes.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Backend, BackendOpts, backend, backend_of, backend_with, get};
use mesh::{
    core::{
        BalanceConfig, Endpoint, LbPolicy, Mesh, Protocol, ServiceConfig,
        balance::NoEndpointsReason,
        classify::{Classify, FailureKind, ResponseClass},
        discover::StaticSource,
    },
    hyper::{Error, HttpClassifier, MeshClient},
};

fn endpoints(backends: &[&Backend]) -> Vec<Endpoint> {
    backends.iter().map(|b| Endpoint::new(b.addr)).collect()
}

fn config(policy: LbPolicy) -> ServiceConfig {
    ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            balance: BalanceConfig {
                policy,
                ..BalanceConfig::default()
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    }
}

fn client_for(
    source: StaticSource,
    config: ServiceConfig,
) -> MeshClient<http_body_util::Empty<bytes::Bytes>> {
    let mesh = Mesh::builder()
        .service_with("reviews.test:9080", source, config)
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::new(mesh)
}

/// Sends `n` requests, `concurrency` at a time (each batch in flight together), and counts
/// answers per backend.
async fn spread(
    client: &MeshClient<http_body_util::Empty<bytes::Bytes>>,
    n: usize,
    concurrency: usize,
    make: impl Fn(usize) -> http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut i = 0;
    while i < n {
        let batch: Vec<_> = (i..(i + concurrency).min(n))
            .map(|k| tokio::spawn(client.request(make(k))))
            .collect();
        for task in batch {
            let rsp = task.await.unwrap().expect("request succeeds");
            assert_eq!(rsp.status(), 200);
            *counts.entry(backend_of(&rsp)).or_insert(0) += 1;
        }
        i += concurrency;
    }
    counts
}

#[tokio::test]
async fn p2c_spreads_requests_over_all_endpoints() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let client = client_for(
        StaticSource::new(endpoints(&[&a, &b, &c])).unwrap(),
        ServiceConfig::default(),
    );
    let counts = spread(&client, 900, 9, |_| get("http://reviews.test:9080/")).await;
    let stats = client.endpoints(&"reviews.test:9080".parse().unwrap());
    for name in ["a", "b", "c"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            n >= 90,
            "backend {name} got {n} of 900: {counts:?} {stats:#?}"
        );
    }
}

#[tokio::test]
async fn p2c_tries_every_endpoint_even_one_request_at_a_time() {
    // At concurrency 1 every comparison is decided by latency estimates; endpoints that have not
    // answered yet must still be tried rather than starved.
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let client = client_for(
        StaticSource::new(endpoints(&[&a, &b, &c])).unwrap(),
        ServiceConfig::default(),
    );
    let counts = spread(&client, 60, 1, |_| get("http://reviews.test:9080/")).await;
    assert_eq!(
        counts.len(),
        3,
        "every endpoint answers at least once: {counts:?}"
    );
}

#[tokio::test]
async fn round_robin_takes_turns() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let client = client_for(
        StaticSource::new(endpoints(&[&a, &b, &c])).unwrap(),
        config(LbPolicy::RoundRobin),
    );
    let counts = spread(&client, 300, 1, |_| get("http://reviews.test:9080/")).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![100; 3],
        "{counts:?}"
    );
}

#[tokio::test]
async fn weighted_spread_follows_endpoint_weights() {
    let (a, b) = (backend("light").await, backend("heavy").await);
    let source = StaticSource::new(vec![
        Endpoint::new(a.addr).weight(1),
        Endpoint::new(b.addr).weight(3),
    ])
    .unwrap();
    let client = client_for(source, config(LbPolicy::Weighted));
    let counts = spread(&client, 4000, 16, |_| get("http://reviews.test:9080/")).await;
    let heavy = counts["heavy"] as f64 / 4000.0;
    // Expected 0.75; binomial σ ≈ 0.007, so ±0.04 is > 5σ.
    assert!(
        (0.71..=0.79).contains(&heavy),
        "heavy share {heavy}: {counts:?}"
    );
}

#[tokio::test]
async fn ring_hash_keeps_each_key_on_one_endpoint() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let client = client_for(
        StaticSource::new(endpoints(&[&a, &b, &c])).unwrap(),
        config(LbPolicy::ring_hash("x-user".parse().unwrap())),
    );
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..10 {
        for user in 0..60 {
            let mut req = get("http://reviews.test:9080/");
            req.headers_mut()
                .insert("x-user", format!("user-{user}").parse().unwrap());
            let rsp = client.request(req).await.unwrap();
            let got = backend_of(&rsp);
            let first = owner
                .entry(format!("user-{user}"))
                .or_insert_with(|| got.clone());
            assert_eq!(*first, got, "user-{user} moved in round {round}");
        }
    }
    let used: std::collections::HashSet<_> = owner.values().collect();
    assert_eq!(
        used.len(),
        3,
        "60 keys should land on all 3 endpoints: {owner:?}"
    );
}

#[tokio::test]
async fn empty_service_fails_fast_with_a_typed_error_naming_it() {
    let client = client_for(StaticSource::new(vec![]).unwrap(), ServiceConfig::default());
    let err = client
        .request(get("http://reviews.test:9080/"))
        .await
        .unwrap_err();
    match &err {
        Error::NoEndpoints(e) => {
            assert_eq!(e.service.as_str(), "reviews.test:9080");
            assert_eq!(e.reason, NoEndpointsReason::Empty);
            assert_eq!(e.waited, Duration::ZERO);
        }
        other => panic!("expected NoEndpoints, got {other:?}"),
    }
    assert!(err.to_string().contains("reviews.test:9080"), "{err}");
    assert_eq!(
        HttpClassifier.classify(Err::<&http::Response<()>, _>(&err)),
        ResponseClass::Failure(FailureKind::NoEndpoints)
    );
}

#[tokio::test]
async fn bounded_wait_for_endpoints_succeeds_when_one_appears_and_fails_when_none_does() {
    let a = backend("a").await;
    let source = StaticSource::new(vec![]).unwrap();
    let mut cfg = ServiceConfig::default();
    cfg.destination.balance.wait_for_endpoints = Duration::from_secs(2);
    let client = client_for(source.clone(), cfg);

    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.request(get("http://reviews.test:9080/")).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    source.update(vec![Endpoint::new(a.addr)]).unwrap();
    let rsp = pending
        .await
        .unwrap()
        .expect("served once the endpoint appears");
    assert_eq!(backend_of(&rsp), "a");

    source.update(vec![]).unwrap();
    let name = "reviews.test:9080".parse().unwrap();
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            client.endpoints(&name).unwrap().is_empty()
        })
        .await
    );
    let started = std::time::Instant::now();
    let err = client
        .request(get("http://reviews.test:9080/"))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(&err, Error::NoEndpoints(e) if e.waited >= Duration::from_secs(2)),
        "{err}"
    );
    // Bounded: the wait ends at its limit, not never (generous slack for a loaded CI machine).
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[tokio::test]
async fn uri_and_host_stay_logical_and_origin_form_routes_by_host() {
    let a = backend("a").await;
    let client = client_for(
        StaticSource::new(endpoints(&[&a])).unwrap(),
        ServiceConfig::default(),
    );
    let rsp = client
        .request(get("http://reviews.test:9080/reviews/1?x=2"))
        .await
        .unwrap();
    assert_eq!(rsp.headers()["x-seen-host"], "reviews.test:9080");
    assert_eq!(rsp.headers()["x-seen-path"], "/reviews/1");

    let mut req = get("/ratings");
    req.headers_mut()
        .insert(http::header::HOST, "Reviews.Test:9080".parse().unwrap());
    let rsp = client.request(req).await.unwrap();
    assert_eq!(backend_of(&rsp), "a");
    assert_eq!(rsp.headers()["x-seen-path"], "/ratings");

    let err = client.request(get("/no-host")).await.unwrap_err();
    assert!(matches!(err, Error::MissingAuthority), "{err}");
    let err = client
        .request(get("https://reviews.test:9080/"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnsupportedScheme(_)), "{err}");
}

#[tokio::test]
async fn http2_destinations_use_prior_knowledge() {
    let a = backend("a").await;
    let cfg = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            protocol: Protocol::Http2,
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = client_for(StaticSource::new(endpoints(&[&a])).unwrap(), cfg);
    let futs: Vec<_> = (0..20)
        .map(|_| client.request(get("http://reviews.test:9080/")))
        .collect();
    for f in futs {
        let rsp = f.await.unwrap();
        assert_eq!(rsp.version(), http::Version::HTTP_2);
        assert_eq!(rsp.headers()["x-seen-version"], "HTTP/2.0");
        assert_eq!(rsp.headers()["x-seen-host"], "reviews.test:9080");
    }
}

/// An h2c server that answers one request per connection and then closes it gracefully
/// (GOAWAY): the client must notice each closed connection and open a new one.
async fn one_request_per_connection() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let tx = std::sync::Mutex::new(Some(tx));
                let svc = hyper::service::service_fn(move |_req| {
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = rx => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn an_http2_endpoint_reconnects_after_its_connection_closes() {
    let (addr, accepted) = one_request_per_connection().await;
    let cfg = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            protocol: Protocol::Http2,
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = client_for(StaticSource::new(vec![Endpoint::new(addr)]).unwrap(), cfg);
    for i in 0..5 {
        // Between requests the server's GOAWAY closes the connection the last one used (a
        // request that reaches it before the final GOAWAY is still served there).
        let rsp = client.request(get("http://reviews.test:9080/")).await;
        assert!(rsp.is_ok(), "request {i}: {:?}", rsp.err());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!((2..=5).contains(&n), "{n} connections for 5 requests");
}

#[tokio::test]
async fn in_flight_requests_finish_when_their_endpoint_is_removed() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_millis(300),
        ..BackendOpts::named("slow")
    })
    .await;
    let other = backend("other").await;
    let source = StaticSource::new(endpoints(&[&slow])).unwrap();
    let client = client_for(source.clone(), ServiceConfig::default());
    let in_flight: Vec<_> = (0..5)
        .map(|_| tokio::spawn(client.request(get("http://reviews.test:9080/"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    source.update(endpoints(&[&other])).unwrap();
    for f in in_flight {
        let rsp = f.await.unwrap().expect("in-flight request completes");
        assert_eq!(backend_of(&rsp), "slow");
    }
    // New requests go to the new endpoint only.
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            let rsp = client
                .request(get("http://reviews.test:9080/"))
                .await
                .unwrap();
            backend_of(&rsp) == "other"
        })
        .await
    );
    for _ in 0..20 {
        let rsp = client
            .request(get("http://reviews.test:9080/"))
            .await
            .unwrap();
        assert_eq!(backend_of(&rsp), "other");
    }
}

#[tokio::test]
async fn connect_failures_are_typed_and_classified() {
    // A port that was just free: nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let client = client_for(
        StaticSource::new(vec![Endpoint::new(addr)]).unwrap(),
        ServiceConfig::default(),
    );
    let err = client
        .request(get("http://reviews.test:9080/"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Connect { endpoint, service, .. }
        if *endpoint == addr && service.as_str() == "reviews.test:9080"),
        "{err}"
    );
    assert!(err.is_unprocessed());
    assert_eq!(
        HttpClassifier.classify(Err::<&http::Response<()>, _>(&err)),
        ResponseClass::Failure(FailureKind::Connect)
    );

    let five_oh_three = backend_with(BackendOpts {
        status: 503,
        ..BackendOpts::named("sick")
    })
    .await;
    let client = client_for(
        StaticSource::new(endpoints(&[&five_oh_three])).unwrap(),
        ServiceConfig::default(),
    );
    let rsp = client
        .request(get("http://reviews.test:9080/"))
        .await
        .unwrap();
    assert_eq!(
        HttpClassifier.classify(Ok::<_, &Error>(&rsp)),
        ResponseClass::Failure(FailureKind::Status(503))
    );
}

#[tokio::test]
async fn balancer_reports_endpoint_load() {
    let (a, b) = (backend("a").await, backend("b").await);
    let client = client_for(
        StaticSource::new(endpoints(&[&a, &b])).unwrap(),
        ServiceConfig::default(),
    );
    spread(&client, 50, 5, |_| get("http://reviews.test:9080/")).await;
    let stats = client
        .endpoints(&"reviews.test:9080".parse().unwrap())
        .unwrap();
    assert_eq!(stats.len(), 2);
    for s in &stats {
        assert_eq!(s.in_flight, 0);
        // Both answered, on loopback: well under a second.
        let ewma = s.ewma_latency.expect("an estimate after responses");
        assert!(ewma < Duration::from_secs(1), "{s:?}");
    }
}

#[tokio::test]
async fn client_composes_with_tower_service_builder() {
    use tower::{ServiceBuilder, ServiceExt};
    let a = backend("a").await;
    let client = client_for(
        StaticSource::new(endpoints(&[&a])).unwrap(),
        ServiceConfig::default(),
    );
    let svc = ServiceBuilder::new()
        .concurrency_limit(4)
        .timeout(Duration::from_secs(5))
        .service(client);
    let rsp = svc.oneshot(get("http://reviews.test:9080/")).await.unwrap();
    assert_eq!(backend_of(&rsp), "a");
}

#[tokio::test]
async fn idle_on_demand_destinations_are_dropped_and_rebuilt() {
    // Two backends reached by IP literal (resolved on demand), one configured service; idle
    // sweeps on a real timer.
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let mesh = Mesh::builder()
        .service(
            "reviews.test:9080",
            StaticSource::new(endpoints(&[&c])).unwrap(),
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::<http_body_util::Empty<bytes::Bytes>>::with_settings(
        mesh,
        mesh::hyper::ClientSettings {
            destination_idle_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    );
    let name = |addr: std::net::SocketAddr| addr.to_string().parse().unwrap();
    let uri = |addr: std::net::SocketAddr| format!("http://{addr}/");
    let target = client.target(&b.addr.to_string()).unwrap();
    for uri in [uri(a.addr), uri(b.addr), "http://reviews.test:9080/".into()] {
        assert_eq!(client.request(get(&uri)).await.unwrap().status(), 200);
    }

    // Idle for long enough: `a` goes; `b` is held by a `Target`; the configured service stays.
    // (Requests in flight and the exact sweep arithmetic: the unit test in mesh-hyper.)
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            client.stats(&name(a.addr)).is_none()
        })
        .await,
        "idle on-demand destinations were not dropped"
    );
    assert!(client.stats(&name(b.addr)).is_some());
    assert!(
        client
            .stats(&"reviews.test:9080".parse().unwrap())
            .is_some()
    );
    // Sent again, `a` is rebuilt and answers; the target still works.
    assert_eq!(
        client.request(get(&uri(a.addr))).await.unwrap().status(),
        200
    );
    assert!(client.stats(&name(a.addr)).is_some());
    assert_eq!(target.request(get("/")).await.unwrap().status(), 200);
}
