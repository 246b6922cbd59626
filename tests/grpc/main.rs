//! mesh-tonic against real tonic servers on loopback: balancing, retries by gRPC status,
//! deadline propagation over three hops, grpc.health.v1 checks, mTLS + authorization,
//! streaming without buffering, trace context over two hops and metrics by gRPC status.

#[path = "../common/mod.rs"]
mod common;
mod hardening;
mod routing;
mod support;
mod telemetry;

use std::{sync::atomic::Ordering, time::Duration};

use common::{
    eventually,
    pki::{Pki, id},
    round_robin,
};
use mesh::{
    core::{
        Endpoint, Mesh, ServiceConfig, ServiceName,
        authz::{Action, AuthorizationPolicy, Authorizer, From, Rule, Source},
        balance::{BalanceConfig, LbPolicy},
        breaker::{BreakerPolicy, BreakerState},
        discover::{StaticSource, health::HealthCheckPolicy},
        outlier::OutlierDetection,
        telemetry::{Registry, Telemetry},
        tls::{ClientTlsMode, ServerTlsMode},
        trace_context::TraceContext,
    },
    hyper::{ClientSettings, server::Acceptor},
    tonic::{GrpcClient, grpc_timeout},
};
use support::{
    Behaviour, INVALID_ARGUMENT, OK, Server, UNAVAILABLE,
    bookinfo::{Review, ReviewsRequest, reviews_client::ReviewsClient},
    plain, start, start_with,
};
use tonic::Code;

const SVC: &str = "reviews.test:9080";

fn name() -> ServiceName {
    SVC.parse().unwrap()
}

fn eps(servers: &[&Server]) -> Vec<Endpoint> {
    servers.iter().map(|s| Endpoint::new(s.addr)).collect()
}

fn grpc(endpoints: Vec<Endpoint>, config: ServiceConfig) -> GrpcClient {
    grpc_with(endpoints, config, ClientSettings::default())
}

fn grpc_with(
    endpoints: Vec<Endpoint>,
    config: ServiceConfig,
    settings: ClientSettings,
) -> GrpcClient {
    let mesh = Mesh::builder()
        .service_with(SVC, StaticSource::new(endpoints).unwrap(), config)
        .without_dns_fallback()
        .build()
        .unwrap();
    GrpcClient::with_settings(mesh, settings)
}

fn reviews(client: &GrpcClient) -> ReviewsClient<mesh::tonic::MeshChannel> {
    ReviewsClient::new(client.channel(SVC).unwrap())
}

fn req(product_id: i32) -> ReviewsRequest {
    ReviewsRequest { product_id }
}

#[tokio::test]
async fn calls_are_balanced_across_endpoints() {
    common::trace();
    let (a, b, c) = (plain("a").await, plain("b").await, plain("c").await);
    let client = grpc(eps(&[&a, &b, &c]), ServiceConfig::default());
    let mut reviews = reviews(&client);
    for i in 0..300 {
        let reply = reviews.get_reviews(req(i)).await.unwrap().into_inner();
        assert_eq!(reply.product_id, i);
    }
    // P2C Peak-EWMA prefers whichever endpoint answers faster, so shares are not equal (on a
    // loaded test machine one endpoint may look slower for a while, and has been seen with 12
    // of 300); every endpoint gets a share.
    for s in [&a, &b, &c] {
        let hits = s.behaviour.hits();
        assert!(hits >= 5, "{} got {hits} of 300 calls", s.behaviour.name);
    }
    // One HTTP/2 connection per endpoint carried them all.
    let stats = client.stats(&name()).unwrap();
    assert_eq!(stats.endpoints.len(), 3);
    assert_eq!(stats.retries.requests, 300);
}

#[tokio::test]
async fn unavailable_is_retried_on_another_endpoint() {
    let (good, bad) = (plain("good").await, plain("bad").await);
    bad.behaviour.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let client = grpc(eps(&[&good, &bad]), round_robin());
    let mut reviews = reviews(&client);
    for i in 0..40 {
        let reply = reviews.get_reviews(req(i)).await.unwrap().into_inner();
        assert_eq!(reply.served_by, "good");
    }
    let stats = client.stats(&name()).unwrap();
    assert!(
        bad.behaviour.hits() > 0,
        "the failing endpoint was never tried"
    );
    assert!(stats.retries.retries >= 1, "{:?}", stats.retries);
}

#[tokio::test]
async fn invalid_argument_is_not_retried_and_ejects_nobody() {
    let s = plain("strict").await;
    s.behaviour.mode.store(INVALID_ARGUMENT, Ordering::SeqCst);
    let client = grpc(eps(&[&s]), ServiceConfig::default());
    let mut reviews = reviews(&client);
    for _ in 0..8 {
        let status = reviews.get_reviews(req(-1)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "product_id must be positive");
    }
    assert_eq!(
        s.behaviour.hits(),
        8,
        "an INVALID_ARGUMENT call was retried"
    );
    let stats = client.stats(&name()).unwrap();
    assert_eq!(stats.retries.retries, 0);
    // Eight failures in a row, but the request's fault: the endpoint stays in rotation.
    assert_eq!(format!("{:?}", stats.endpoints[0].health), "Active");
}

#[tokio::test]
async fn a_deadline_shrinks_along_a_three_hop_chain() {
    // C: the last hop. B: calls C while serving, with no deadline code of its own.
    let c = plain("c").await;
    let c_client = grpc(eps(&[&c]), ServiceConfig::default());
    let mut b_behaviour = Behaviour::named("b");
    b_behaviour.downstream = Some(c_client.channel(SVC).unwrap());
    let b = start(b_behaviour, Acceptor::plaintext(), None).await;
    // A: the test, with a 2 s deadline.
    let a_client = grpc(eps(&[&b]), ServiceConfig::default());
    let mut request = tonic::Request::new(req(1));
    request.set_timeout(Duration::from_secs(2));
    reviews(&a_client).get_reviews(request).await.unwrap();

    let seen = |s: &Server| {
        let v = s.behaviour.seen_timeout.lock().unwrap().clone();
        grpc_timeout::decode(&v.expect("no grpc-timeout arrived")).unwrap()
    };
    let (at_b, at_c) = (seen(&b), seen(&c));
    assert!(at_b <= Duration::from_secs(2), "B saw {at_b:?}");
    // B worked 50 ms before calling C: C's budget is smaller by at least that.
    assert!(
        at_c + Duration::from_millis(50) <= at_b,
        "B saw {at_b:?}, C saw {at_c:?}"
    );
    assert!(at_c > Duration::from_secs(1), "C saw {at_c:?}");

    // And a deadline too short for B's work ends as DEADLINE_EXCEEDED, naming the service.
    let mut request = tonic::Request::new(req(1));
    request.set_timeout(Duration::from_millis(20));
    let status = reviews(&a_client).get_reviews(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("reviews.test"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn not_serving_endpoints_leave_rotation_until_serving_again() {
    let (a, b) = (plain("a").await, plain("b").await);
    let config = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            health_check: Some(HealthCheckPolicy {
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(500),
                unhealthy_threshold: 1,
                healthy_threshold: 1,
                ..HealthCheckPolicy::default()
            }),
            ..Default::default()
        },
        ..round_robin()
    };
    let client = grpc(eps(&[&a, &b]), config);
    let mut reviews = reviews(&client);
    reviews.get_reviews(req(1)).await.unwrap();
    assert_eq!(client.stats(&name()).unwrap().endpoints.len(), 2);

    b.health
        .set_service_status("", mesh::tonic::health::ServingStatus::NotServing)
        .await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            client.stats(&name()).unwrap().endpoints.len() == 1
        })
        .await,
        "NOT_SERVING endpoint still in rotation"
    );
    let before = b.behaviour.hits();
    for i in 0..20 {
        assert_eq!(
            reviews
                .get_reviews(req(i))
                .await
                .unwrap()
                .into_inner()
                .served_by,
            "a"
        );
    }
    assert_eq!(b.behaviour.hits(), before);

    b.health
        .set_service_status("", mesh::tonic::health::ServingStatus::Serving)
        .await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            client.stats(&name()).unwrap().endpoints.len() == 2
        })
        .await,
        "SERVING endpoint did not come back"
    );
    for i in 0..20 {
        reviews.get_reviews(req(i)).await.unwrap();
    }
    assert!(b.behaviour.hits() > before);
}

fn allow_only(principal: &str) -> Authorizer {
    Authorizer::new(vec![AuthorizationPolicy {
        name: "reviews-callers".into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![From {
                source: Source {
                    principals: vec![principal.into()],
                },
            }],
            to: vec![],
        }],
    }])
    .unwrap()
}

#[tokio::test]
async fn mtls_and_authorization_deny_a_wrong_identity() {
    let pki = Pki::new();
    let acceptor =
        Acceptor::new(Some(pki.store("reviews", "reviews")), ServerTlsMode::Strict).unwrap();
    let server = start(
        Behaviour::named("reviews"),
        acceptor,
        Some(allow_only("cluster.local/ns/default/sa/productpage")),
    )
    .await;
    let endpoint = Endpoint::new(server.addr).identity(id("reviews"));
    let config = ServiceConfig::default();
    let as_identity = |sa: &str| {
        grpc_with(
            vec![endpoint.clone()],
            config.clone(),
            ClientSettings {
                tls: Some(pki.store(sa, sa)),
                ..ClientSettings::default()
            },
        )
    };

    let productpage = as_identity("productpage");
    let reply = reviews(&productpage).get_reviews(req(7)).await.unwrap();
    assert_eq!(reply.into_inner().product_id, 7);

    let ratings = as_identity("ratings");
    let status = reviews(&ratings).get_reviews(req(7)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("sa/ratings"),
        "{}",
        status.message()
    );
    assert_eq!(
        server.behaviour.hits(),
        1,
        "a denied call reached the service"
    );
    // Denials are the caller's problem: no retry.
    assert_eq!(ratings.stats(&name()).unwrap().retries.retries, 0);

    // A plaintext client cannot even connect: UNAVAILABLE, naming the service.
    let plaintext = grpc(
        vec![endpoint.clone()],
        ServiceConfig {
            destination: mesh::core::DestinationPolicy {
                tls: mesh::core::tls::ClientTlsPolicy {
                    mode: ClientTlsMode::Disable,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..ServiceConfig::default()
        },
    );
    let status = reviews(&plaintext).get_reviews(req(7)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("reviews.test"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn server_streams_arrive_as_they_are_produced() {
    let mut behaviour = Behaviour::named("stream");
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    behaviour.release = Some(release.clone());
    let s = start(behaviour, Acceptor::plaintext(), None).await;
    let client = grpc(eps(&[&s]), ServiceConfig::default());
    let mut stream = reviews(&client)
        .watch_reviews(req(1))
        .await
        .unwrap()
        .into_inner();
    // The server holds the second message until we have the first: a buffering channel
    // would wait forever here (bounded by the timeout).
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the first message was held back")
        .unwrap()
        .unwrap();
    assert_eq!(first.text, "first");
    release.notify_one();
    let second = stream.message().await.unwrap().unwrap();
    assert_eq!(second.text, "second");
    assert!(stream.message().await.unwrap().is_none());
}

#[tokio::test]
async fn bidirectional_streams_pass_through_message_by_message() {
    let s = plain("moderator").await;
    let client = grpc(eps(&[&s]), ServiceConfig::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<Review>(1);
    let mut replies = reviews(&client)
        .moderate(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for text in ["one", "two", "three"] {
        tx.send(Review {
            reviewer: "r".into(),
            text: text.into(),
            stars: 4,
            color: String::new(),
        })
        .await
        .unwrap();
        // Each reply comes back before the next message is sent.
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply held back")
            .unwrap()
            .unwrap();
        assert_eq!(reply.text, format!("moderated: {text}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

#[tokio::test]
async fn no_endpoints_is_unavailable_naming_the_service() {
    let client = grpc(vec![], ServiceConfig::default());
    let status = reviews(&client).get_reviews(req(1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("reviews.test"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn failing_statuses_in_trailers_eject_the_endpoint() {
    // A stream that fails after its first message: the status comes in the trailers, after the
    // call was committed. It is not retried, but it counts against the endpoint.
    let (good, bad) = (plain("good").await, plain("bad").await);
    bad.behaviour.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let config = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            balance: BalanceConfig {
                policy: LbPolicy::RoundRobin,
                outlier_detection: Some(OutlierDetection {
                    consecutive_failures: Some(3),
                    success_rate: None,
                    ..OutlierDetection::default()
                }),
                ..BalanceConfig::default()
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = grpc(eps(&[&good, &bad]), config);
    let mut reviews = reviews(&client);
    let mut broken = 0;
    for i in 0..10 {
        let mut stream = reviews.watch_reviews(req(i)).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        match stream.message().await {
            Ok(Some(second)) => assert_eq!(
                (first.reviewer.as_str(), second.text.as_str()),
                ("good", "second")
            ),
            Ok(None) => panic!("stream ended without its second message"),
            Err(status) => {
                assert_eq!(first.reviewer, "bad");
                assert_eq!(status.code(), Code::Unavailable);
                broken += 1;
            }
        }
    }
    // Round robin alternates until the third broken stream ejects `bad`.
    assert_eq!(
        broken, 3,
        "bad was not ejected after 3 failures in trailers"
    );
    assert_eq!(bad.behaviour.hits(), 3, "a committed stream was retried");
    let stats = client.stats(&name()).unwrap();
    let bad_stats = stats.endpoints.iter().find(|e| e.addr == bad.addr).unwrap();
    assert_eq!(format!("{:?}", bad_stats.health), "Ejected");
    assert_eq!(stats.retries.retries, 0);
}

#[tokio::test]
async fn failing_statuses_in_trailers_open_the_breaker_and_still_eject() {
    // Both the service breaker and outlier detection wait for the trailers: each must hear
    // every final status (one deferred outcome must not replace the other).
    let bad = plain("bad").await;
    bad.behaviour.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let config = ServiceConfig {
        destination: mesh::core::DestinationPolicy {
            breaker: Some(BreakerPolicy {
                window_size: 4,
                minimum_calls: 4,
                wait_in_open: Duration::from_secs(60),
                ..BreakerPolicy::default()
            }),
            balance: BalanceConfig {
                outlier_detection: Some(OutlierDetection {
                    consecutive_failures: Some(4),
                    success_rate: None,
                    // One endpoint of one: let it be ejected all the same.
                    max_ejection_percent: 100,
                    ..OutlierDetection::default()
                }),
                ..BalanceConfig::default()
            },
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let client = grpc(eps(&[&bad]), config);
    let mut reviews = reviews(&client);
    for i in 0..4 {
        let mut stream = reviews.watch_reviews(req(i)).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().reviewer, "bad");
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    let stats = client.stats(&name()).unwrap();
    assert_eq!(stats.breaker, Some(BreakerState::Open));
    let bad_stats = stats.endpoints.iter().find(|e| e.addr == bad.addr).unwrap();
    assert_eq!(format!("{:?}", bad_stats.health), "Ejected");
    let status = reviews.watch_reviews(req(9)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("circuit breaker"),
        "{}",
        status.message()
    );
    assert_eq!(bad.behaviour.hits(), 4, "an open breaker sends nothing");
}
