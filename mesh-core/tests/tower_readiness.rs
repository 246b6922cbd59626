//! Each public layer of mesh-core composed over tower's `ConcurrencyLimit` and `Buffer`, whose
//! `call` panics (or loses its backpressure) when `poll_ready` was not driven first: requests
//! queue, retry and time out through them without a panic, and the inner service never sees
//! more requests at once than its limit.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh_core::{
    breaker::{BreakerLayer, BreakerPolicy},
    classify::{Classify, ErrorsFail, FailureKind, ResponseClass},
    limit::{LimitLayer, LimitPolicy},
    retry::{RetryLayer, RetryPolicy},
    timeout::TimeoutLayer,
};
use tower::{
    BoxError, Service, ServiceBuilder, ServiceExt, buffer::BufferLayer,
    limit::ConcurrencyLimitLayer,
};

/// 5xx is a failure (retried), anything else a success.
#[derive(Clone)]
struct Codes;
impl Classify<u16, BoxError> for Codes {
    fn classify(&self, r: Result<&u16, &BoxError>) -> ResponseClass {
        match r {
            Ok(s) if *s >= 500 => ResponseClass::Failure(FailureKind::Status(*s)),
            Ok(_) => ResponseClass::Success,
            Err(_) => ResponseClass::Failure(FailureKind::Timeout),
        }
    }
}

/// The innermost service: counts requests in flight (and the most at once), answers after
/// 20 ms; the first two calls answer 503.
#[derive(Clone, Default)]
struct Backend {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl<B: Send + 'static> Service<http::Request<B>> for Backend {
    type Response = u16;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u16, BoxError>> + Send>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let (in_flight, most) = (self.in_flight.clone(), self.most.clone());
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(if n < 2 { 503 } else { 200 })
        })
    }
}

/// `$layer` over a Buffer of 1 over tower's limit of 1 over a [`Backend`]; `$n` requests at
/// once, each with the body `$body`; the results and the backend.
macro_rules! run {
    ($layer:expr, $n:expr, $body:expr) => {{
        let backend = Backend::default();
        let svc = ServiceBuilder::new()
            .layer($layer)
            .layer(BufferLayer::new(1))
            .layer(ConcurrencyLimitLayer::new(1))
            .service(backend.clone());
        // All at once on this task (a panic in a layer fails the test).
        let calls = (0..$n).map(|_| svc.clone().oneshot(http::Request::new($body)));
        let out: Vec<Result<u16, String>> = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        (out, backend)
    }};
}

fn name() -> mesh_core::ServiceName {
    "svc:80".parse().unwrap()
}

#[tokio::test]
async fn limit_queues_over_concurrency_limit_and_buffer() {
    let policy = LimitPolicy {
        max_concurrent_requests: Some(2),
        max_pending_requests: 8,
        ..Default::default()
    };
    let (out, backend) = run!(LimitLayer::new(name(), &policy).unwrap(), 6, ());
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    assert_eq!(
        backend.most.load(Ordering::SeqCst),
        1,
        "the inner limit of 1 was exceeded"
    );
}

#[tokio::test]
async fn retry_retries_over_concurrency_limit_and_buffer() {
    let layer = RetryLayer::new(name(), RetryPolicy::default(), Codes).unwrap();
    let (out, backend) = run!(layer, 4, http_body_util::Empty::<bytes::Bytes>::new());
    // Every request that got a 503 was retried through the limit, none panicked.
    assert!(out.iter().all(|r| matches!(r, Ok(200))), "{out:?}");
    assert!(backend.calls.load(Ordering::SeqCst) > 4);
    assert_eq!(backend.most.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn timeout_and_breaker_over_concurrency_limit_and_buffer() {
    let (out, backend) = run!(
        TimeoutLayer::new(name(), Some(Duration::from_secs(5))),
        4,
        ()
    );
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    assert_eq!(backend.most.load(Ordering::SeqCst), 1);
    let breaker = BreakerLayer::new(name(), &BreakerPolicy::default(), ErrorsFail).unwrap();
    let (out, backend) = run!(breaker, 4, ());
    assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
    assert_eq!(backend.most.load(Ordering::SeqCst), 1);
}
