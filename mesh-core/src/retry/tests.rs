//! The retry layer over a real balancer, with tokio's clock paused: per-try timeouts that
//! count against the endpoint that did not answer.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http_body_util::Empty;
use tower::ServiceExt;

use super::*;
use crate::{
    Endpoint,
    balance::{BalanceConfig, Balancer, LbPolicy, NoEndpoints},
    classify::{FailureKind, ResponseClass},
    discover::{EndpointSource, StaticSource},
    outlier::{HealthState, OutlierDetection},
    timeout::TimedOut,
};

/// What the endpoints answer: their address.
#[derive(Debug)]
enum Error {
    TimedOut,
    NoEndpoints,
}

impl From<TimedOut> for Error {
    fn from(_: TimedOut) -> Self {
        Error::TimedOut
    }
}

impl From<NoEndpoints> for Error {
    fn from(_: NoEndpoints) -> Self {
        Error::NoEndpoints
    }
}

#[derive(Clone)]
struct Classes;

impl Classify<SocketAddr, Error> for Classes {
    fn classify(&self, r: Result<&SocketAddr, &Error>) -> ResponseClass {
        match r {
            Ok(_) => ResponseClass::Success,
            Err(Error::TimedOut) => ResponseClass::Failure(FailureKind::Timeout),
            Err(Error::NoEndpoints) => ResponseClass::Failure(FailureKind::NoEndpoints),
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<SocketAddr, Error>> + Send>>;

#[tokio::test(start_paused = true)]
async fn per_try_timeouts_eject_the_endpoint_that_hangs() {
    let (hung, good): (SocketAddr, SocketAddr) = (
        "10.0.0.1:80".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
    );
    let name: crate::ServiceName = "svc:80".parse().unwrap();
    let source = StaticSource::new(vec![Endpoint::new(hung), Endpoint::new(good)]).unwrap();
    let config = BalanceConfig {
        policy: LbPolicy::RoundRobin,
        outlier_detection: Some(OutlierDetection {
            consecutive_failures: Some(3),
            ..OutlierDetection::default()
        }),
        ..BalanceConfig::default()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let balancer = Balancer::with_classifier(
        name.clone(),
        source.subscribe(&name),
        config,
        move |ep: &Endpoint| {
            let (addr, calls) = (ep.addr, c.clone());
            tower::service_fn(
                move |_req: http::Request<ReplayBody<Empty<bytes::Bytes>>>| {
                    let answer: Answer = if addr == hung {
                        calls.fetch_add(1, Ordering::SeqCst);
                        Box::pin(std::future::pending())
                    } else {
                        Box::pin(async move { Ok(addr) })
                    };
                    answer
                },
            )
        },
        Classes,
    );
    let policy = RetryPolicy {
        per_try_timeout: Some(Duration::from_millis(100)),
        ..RetryPolicy::default()
    };
    let retry = RetryLayer::new(name.clone(), policy, Classes).unwrap();
    let svc = tower::Layer::layer(&retry, balancer.clone());
    for i in 0..20 {
        let req = http::Request::get("/").body(Empty::new()).unwrap();
        let addr = svc
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!(addr, good, "request {i}");
    }
    let stats = balancer.endpoints();
    let hung_stats = stats.iter().find(|e| e.addr == hung).unwrap();
    assert_eq!(hung_stats.health, HealthState::Ejected, "{hung_stats:?}");
    assert_eq!(
        hung_stats.responses.1, 3,
        "three timeouts counted: {hung_stats:?}"
    );
    // Round robin sent every other first try to the hung endpoint until it was ejected.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(retry.stats().retries, 3);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_abandoned_before_its_timeout_does_not_count() {
    let hung: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let name: crate::ServiceName = "svc:80".parse().unwrap();
    let source = StaticSource::new(vec![Endpoint::new(hung)]).unwrap();
    let balancer = Balancer::with_classifier(
        name.clone(),
        source.subscribe(&name),
        BalanceConfig::default(),
        move |_ep: &Endpoint| {
            tower::service_fn(
                move |_req: http::Request<ReplayBody<Empty<bytes::Bytes>>>| {
                    let answer: Answer = Box::pin(std::future::pending());
                    answer
                },
            )
        },
        Classes,
    );
    let policy = RetryPolicy {
        per_try_timeout: Some(Duration::from_secs(10)),
        ..RetryPolicy::default()
    };
    let retry = RetryLayer::new(name.clone(), policy, Classes).unwrap();
    let svc = tower::Layer::layer(&retry, balancer.clone());
    for _ in 0..10 {
        // The caller gives up after 1 s, long before the per-try timeout.
        let req = http::Request::get("/").body(Empty::new()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(req)).await;
        assert!(r.is_err());
    }
    let ep = &balancer.endpoints()[0];
    assert_eq!(ep.health, HealthState::Active, "{ep:?}");
    assert_eq!(ep.responses, (0, 0), "{ep:?}");
}
