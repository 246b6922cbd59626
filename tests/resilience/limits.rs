//! Rate limits on both sides and the service-level circuit breaker.

use super::*;

#[tokio::test]
async fn client_rate_limit_rejects_above_the_rate_and_admits_below_it() {
    let a = backend("a").await;
    let config = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            limits: LimitPolicy {
                rate_limit: Some(RateLimit {
                    requests_per_second: 20,
                    burst: Some(5),
                }),
                ..LimitPolicy::default()
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = mesh_client(eps(&[&a]), config);
    let mut limited = 0;
    for _ in 0..30 {
        match client.request(get(URI)).await {
            Ok(_) => {}
            Err(Error::RateLimited(r)) => {
                assert!(
                    r.retry_after > Duration::ZERO && r.retry_after <= Duration::from_millis(60)
                );
                limited += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        limited >= 20,
        "30 back-to-back requests against 20/s burst 5: {limited} limited"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Below the rate: every request passes.
    for _ in 0..10 {
        client.request(get(URI)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    assert!(client.stats(&name()).unwrap().limits.rate_limited >= 20);
}

#[tokio::test]
async fn server_rate_limit_answers_429_with_retry_after() {
    use mesh::hyper::server::{RateLimitLayer, RateLimitRule};
    use tower::{ServiceBuilder, ServiceExt};

    let layer = RateLimitLayer::new(vec![RateLimitRule {
        path_prefix: "/api".into(),
        per_caller: true,
        rate: RateLimit {
            requests_per_second: 2,
            burst: Some(2),
        },
    }])
    .unwrap();
    let svc =
        ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(|_req: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
            });
    let req = |path: &str| http::Request::get(path).body(()).unwrap();
    assert_eq!(
        svc.clone().oneshot(req("/api/x")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc.clone().oneshot(req("/api/x")).await.unwrap().status(),
        200
    );
    let rsp = svc.clone().oneshot(req("/api/x")).await.unwrap();
    assert_eq!(rsp.status(), 429);
    assert_eq!(rsp.headers()["retry-after"], "1");
    // Other routes are not limited by this rule.
    for _ in 0..5 {
        assert_eq!(
            svc.clone().oneshot(req("/health")).await.unwrap().status(),
            200
        );
    }
    assert_eq!(layer.rejected(), 1);
}

#[tokio::test]
async fn breaker_opens_fails_fast_and_closes_after_recovery() {
    let (a, status) = switchable("a").await;
    status.store(503, Ordering::SeqCst);
    let config = ServiceConfig {
        route: mesh::core::RoutePolicy {
            retries: RetryPolicy::disabled(),
            ..Default::default()
        },
        destination: mesh::core::DestinationPolicy {
            breaker: Some(BreakerPolicy {
                window_size: 10,
                minimum_calls: 10,
                wait_in_open: Duration::from_millis(300),
                half_open_calls: 2,
                ..BreakerPolicy::default()
            }),
            balance: BalanceConfig {
                outlier_detection: None,
                ..BalanceConfig::default()
            },
            ..Default::default()
        },
    };
    let client = mesh_client(eps(&[&a]), config);
    for _ in 0..10 {
        assert_eq!(client.request(get(URI)).await.unwrap().status(), 503);
    }
    assert_eq!(
        client.stats(&name()).unwrap().breaker,
        Some(BreakerState::Open)
    );
    let hits = a.hits();
    let err = client.request(get(URI)).await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen(_)), "{err}");
    assert_eq!(a.hits(), hits, "an open breaker sends nothing");
    status.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..2 {
        assert_eq!(client.request(get(URI)).await.unwrap().status(), 200);
    }
    assert_eq!(
        client.stats(&name()).unwrap().breaker,
        Some(BreakerState::Closed)
    );
}
