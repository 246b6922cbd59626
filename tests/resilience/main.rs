//! Error management against real hyper servers on loopback: retries and their budget, body
//! replay, per-try timeouts, hedging, outlier ejection and re-admission, load shedding, rate
//! limits (client and server), the service-level breaker and the overall timeout.

#[path = "../common/mod.rs"]
mod common;
mod limits;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    Backend, BackendOpts, backend, backend_of, backend_with, eventually, get, round_robin,
    switchable,
};
use http_body_util::{BodyExt, Full};
use mesh::{
    core::{
        BalanceConfig, Endpoint, Mesh, ServiceConfig, ServiceName,
        breaker::{BreakerPolicy, BreakerState},
        discover::StaticSource,
        limit::{LimitPolicy, RateLimit},
        outlier::{HealthState, OutlierDetection},
        retry::{HedgePolicy, RetryPolicy},
        timeout::TimeoutKind,
    },
    hyper::{Error, MeshClient},
};

const SVC: &str = "reviews.test:9080";
const URI: &str = "http://reviews.test:9080/";

fn name() -> ServiceName {
    SVC.parse().unwrap()
}

fn mesh_client<B: mesh::hyper::RequestBody>(
    endpoints: Vec<Endpoint>,
    config: ServiceConfig,
) -> MeshClient<B> {
    let mesh = Mesh::builder()
        .service_with(SVC, StaticSource::new(endpoints).unwrap(), config)
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::new(mesh)
}

fn eps(backends: &[&Backend]) -> Vec<Endpoint> {
    backends.iter().map(|b| Endpoint::new(b.addr)).collect()
}

fn dead_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Sends `n` GETs, `concurrency` at a time; returns (successes, errors).
async fn load(
    client: &MeshClient<http_body_util::Empty<Bytes>>,
    n: usize,
    concurrency: usize,
) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut errors = Vec::new();
    let mut sent = 0;
    while sent < n {
        let batch: Vec<_> = (sent..(sent + concurrency).min(n))
            .map(|_| tokio::spawn(client.request(get(URI))))
            .collect();
        for t in batch {
            match t.await.unwrap() {
                Ok(rsp) if rsp.status().is_success() => ok += 1,
                Ok(rsp) => errors.push(format!("status {}", rsp.status())),
                Err(e) => errors.push(e.to_string()),
            }
        }
        sent += concurrency;
    }
    (ok, errors)
}

#[tokio::test]
async fn one_dead_backend_of_three_keeps_success_above_99_9_percent() {
    let (a, b) = (backend("a").await, backend("b").await);
    let mut endpoints = eps(&[&a, &b]);
    endpoints.push(Endpoint::new(dead_addr()));
    let client = mesh_client(endpoints, ServiceConfig::default());
    let (ok, errors) = load(&client, 2000, 8).await;
    assert!(ok >= 1998, "{ok} of 2000 succeeded; errors: {errors:?}");
    let stats = client.stats(&name()).unwrap();
    // The dead endpoint was ejected after its consecutive connect failures.
    let dead = stats
        .endpoints
        .iter()
        .find(|e| e.addr.port() != a.addr.port() && e.addr.port() != b.addr.port())
        .unwrap();
    assert_eq!(dead.health, HealthState::Ejected, "{stats:#?}");
    assert!(stats.retries.retries > 0);
}

#[tokio::test]
async fn all_backends_failing_bounds_attempts_by_the_budget() {
    let sick: Vec<Backend> = futures_util::future::join_all((0..3).map(|i| {
        backend_with(BackendOpts {
            status: 503,
            ..BackendOpts::named(&format!("sick{i}"))
        })
    }))
    .await;
    let client = mesh_client(
        sick.iter().map(|b| Endpoint::new(b.addr)).collect(),
        ServiceConfig::default(),
    );
    let started = Instant::now();
    let n = 2000;
    let (ok, errors) = load(&client, n, 8).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(ok, 0);
    assert!(
        errors.iter().all(|e| e == "status 503 Service Unavailable"),
        "{:?}",
        &errors[..3]
    );
    let hits: usize = sick.iter().map(Backend::hits).sum();
    let per_request = hits as f64 / n as f64;
    // Budget: 20 % of requests, plus a reserve of 10/s over the 10 s window (100), plus 10/s
    // for the time the test ran.
    let bound = 1.2 + (100.0 + 10.0 * elapsed) / n as f64;
    assert!(
        per_request <= bound,
        "{per_request:.3} attempts per request > {bound:.3}"
    );
    let stats = client.stats(&name()).unwrap();
    assert!(stats.retries.budget_exhausted > 0, "{:?}", stats.retries);
    assert_eq!(stats.retries.attempts() as usize, hits);
}

#[tokio::test]
async fn an_endpoint_returning_503_is_ejected_and_readmitted_after_it_recovers() {
    let good = backend("good").await;
    let (flaky, status) = switchable("flaky").await;
    let mut config = round_robin();
    config.destination.balance.outlier_detection = Some(OutlierDetection {
        base_ejection_time: Duration::from_millis(300),
        ..OutlierDetection::default()
    });
    let client = mesh_client(eps(&[&good, &flaky]), config);
    status.store(503, Ordering::SeqCst);
    let (ok, _) = load(&client, 100, 1).await;
    assert_eq!(ok, 100, "retries hide the sick endpoint's failures");
    let health = || {
        client
            .endpoints(&name())
            .unwrap()
            .into_iter()
            .find(|e| e.addr == flaky.addr)
            .unwrap()
            .health
    };
    assert_eq!(health(), HealthState::Ejected);
    let hits = flaky.hits();
    load(&client, 50, 1).await;
    assert_eq!(flaky.hits(), hits, "an ejected endpoint gets no requests");

    // It recovers; after the ejection time one probe re-admits it.
    status.store(200, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), async || {
            load(&client, 5, 1).await;
            health() == HealthState::Active
        })
        .await
    );
    let hits = flaky.hits();
    load(&client, 20, 1).await;
    assert!(
        flaky.hits() >= hits + 5,
        "re-admitted endpoint takes its share again"
    );
}

#[tokio::test]
async fn concurrency_limit_sheds_immediately() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_millis(500),
        ..BackendOpts::named("slow")
    })
    .await;
    let config = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            limits: LimitPolicy {
                max_concurrent_requests: Some(2),
                max_pending_requests: 0,
                rate_limit: None,
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = mesh_client(eps(&[&slow]), config);
    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.request(get(URI))))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let err = client.request(get(URI)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "shed, not queued: {:?}",
        started.elapsed()
    );
    match &err {
        Error::Overloaded(o) => assert_eq!((o.max_concurrent, o.in_flight), (2, 2)),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(err.to_string().contains(SVC));
    for b in busy {
        assert_eq!(b.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(client.stats(&name()).unwrap().limits.shed, 1);
}

#[tokio::test]
async fn bounded_queue_waits_for_a_slot() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_millis(100),
        ..BackendOpts::named("slow")
    })
    .await;
    let config = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            limits: LimitPolicy {
                max_concurrent_requests: Some(1),
                max_pending_requests: 2,
                rate_limit: None,
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = mesh_client(eps(&[&slow]), config);
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(client.request(get(URI))))
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::Overloaded(_)) => shed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((ok, shed), (3, 1), "one in flight, two queued, one shed");
}

#[tokio::test]
async fn per_try_timeout_retries_onto_a_healthy_endpoint() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_secs(5),
        ..BackendOpts::named("slow")
    })
    .await;
    let fast = backend("fast").await;
    let mut config = round_robin();
    config.route.retries.per_try_timeout = Some(Duration::from_millis(200));
    config.destination.balance.outlier_detection = None;
    let client = mesh_client(eps(&[&slow, &fast]), config);
    for _ in 0..6 {
        let started = Instant::now();
        let rsp = client.request(get(URI)).await.unwrap();
        assert_eq!(backend_of(&rsp), "fast");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let stats = client.stats(&name()).unwrap();
    assert!(stats.retries.retries >= 2, "{:?}", stats.retries);
}

#[tokio::test]
async fn per_try_timeout_error_is_typed_when_no_retry_helps() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_secs(5),
        ..BackendOpts::named("slow")
    })
    .await;
    let mut config = ServiceConfig::default();
    config.route.retries.per_try_timeout = Some(Duration::from_millis(100));
    config.route.retries.attempts = 1;
    let client = mesh_client(eps(&[&slow]), config);
    let err = client.request(get(URI)).await.unwrap_err();
    assert!(
        matches!(&err, Error::TimedOut(t) if t.kind == TimeoutKind::PerTry),
        "{err}"
    );
    assert_eq!(slow.hits(), 2, "first try and one retry");
}

#[tokio::test]
async fn post_is_not_retried_by_default_but_get_is() {
    let sick = backend_with(BackendOpts {
        status: 503,
        ..BackendOpts::named("sick")
    })
    .await;
    let mut config = ServiceConfig::default();
    config.destination.balance.outlier_detection = None;
    let client = mesh_client::<Full<Bytes>>(eps(&[&sick]), config.clone());
    let post = http::Request::post(URI)
        .body(Full::new(Bytes::from("order")))
        .unwrap();
    assert_eq!(client.request(post).await.unwrap().status(), 503);
    assert_eq!(sick.hits(), 1, "POST sent once");
    let get = http::Request::get(URI)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(client.request(get).await.unwrap().status(), 503);
    assert_eq!(sick.hits(), 4, "GET sent three times (2 retries)");

    // Opted in, POST is retried and its body replayed each time.
    config.route.retries.retry_non_idempotent = true;
    let client = mesh_client::<Full<Bytes>>(eps(&[&sick]), config);
    let post = http::Request::post(URI)
        .body(Full::new(Bytes::from("order")))
        .unwrap();
    let rsp = client.request(post).await.unwrap();
    assert_eq!(rsp.headers()["x-body-len"], "5");
    assert_eq!(sick.hits(), 7);
}

#[tokio::test]
async fn bodies_over_the_replay_limit_are_sent_once_and_small_ones_replayed() {
    let sick = backend_with(BackendOpts {
        status: 503,
        ..BackendOpts::named("sick")
    })
    .await;
    let mut config = ServiceConfig::default();
    config.destination.balance.outlier_detection = None;
    let client = mesh_client::<Full<Bytes>>(eps(&[&sick]), config);
    let big = http::Request::put(URI)
        .body(Full::new(Bytes::from(vec![7u8; 100 * 1024])))
        .unwrap();
    let rsp = client.request(big).await.unwrap();
    assert_eq!((rsp.status().as_u16(), sick.hits()), (503, 1));
    assert_eq!(client.stats(&name()).unwrap().retries.not_replayable, 1);

    let small = http::Request::put(URI)
        .body(Full::new(Bytes::from(vec![7u8; 1024])))
        .unwrap();
    let rsp = client.request(small).await.unwrap();
    assert_eq!(
        rsp.headers()["x-body-len"],
        "1024",
        "replayed body arrives whole"
    );
    assert_eq!(sick.hits(), 4);
}

#[tokio::test]
async fn connect_failures_are_retried_even_for_post() {
    let good = backend("good").await;
    let mut config = round_robin();
    config.destination.balance.outlier_detection = None;
    let client = mesh_client::<Full<Bytes>>(
        vec![Endpoint::new(dead_addr()), Endpoint::new(good.addr)],
        config,
    );
    for _ in 0..4 {
        let post = http::Request::post(URI)
            .body(Full::new(Bytes::from("x")))
            .unwrap();
        let rsp = client.request(post).await.unwrap();
        assert_eq!(backend_of(&rsp), "good");
    }
}

#[tokio::test]
async fn hedging_cuts_the_tail_of_one_slow_endpoint() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_millis(400),
        ..BackendOpts::named("slow")
    })
    .await;
    let (f1, f2) = (backend("f1").await, backend("f2").await);
    let run = |hedge: Option<HedgePolicy>| {
        let endpoints = eps(&[&slow, &f1, &f2]);
        async move {
            let mut config = round_robin();
            config.destination.balance.outlier_detection = None;
            config.route.retries.hedge = hedge;
            let client = mesh_client::<http_body_util::Empty<Bytes>>(endpoints, config);
            // Warm up: the hedge delay needs latencies to be known.
            for _ in 0..20 {
                client.request(get(URI)).await.unwrap();
            }
            let mut latencies = Vec::new();
            for _ in 0..150 {
                let started = Instant::now();
                let rsp = client.request(get(URI)).await.unwrap();
                assert_eq!(rsp.status(), 200);
                latencies.push(started.elapsed());
            }
            latencies.sort();
            (
                latencies[latencies.len() * 99 / 100],
                client.stats(&name()).unwrap(),
            )
        }
    };
    let (p99_plain, _) = run(None).await;
    let hedge = HedgePolicy {
        percentile: 0.5,
        min_samples: 10,
        ..HedgePolicy::default()
    };
    let (p99_hedged, stats) = run(Some(hedge)).await;
    assert!(stats.retries.hedges > 0, "{:?}", stats.retries);
    assert!(
        p99_hedged * 2 <= p99_plain,
        "hedged p99 {p99_hedged:?} vs plain p99 {p99_plain:?}"
    );
}

#[tokio::test]
async fn overall_timeout_bounds_retries_too() {
    let slow = backend_with(BackendOpts {
        delay: Duration::from_secs(5),
        ..BackendOpts::named("slow")
    })
    .await;
    let mut config = ServiceConfig {
        route: mesh::core::RoutePolicy {
            timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    config.route.retries.per_try_timeout = Some(Duration::from_millis(200));
    let client = mesh_client(eps(&[&slow]), config);
    let started = Instant::now();
    let err = client.request(get(URI)).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(&err, Error::TimedOut(t) if t.kind == TimeoutKind::Request),
        "{err}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // The response body type is hyper's; make sure a successful one still reads fine.
    let ok = backend("ok").await;
    let client = mesh_client::<http_body_util::Empty<Bytes>>(eps(&[&ok]), ServiceConfig::default());
    let body = client
        .request(get(URI))
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "ok");
}
