//! Telemetry through mesh-tonic: trace context over two gRPC hops, calls counted by the gRPC
//! status of headers and trailers on both sides.

use super::*;

#[tokio::test]
async fn trace_context_crosses_a_two_hop_grpc_chain() {
    // C: the last hop. B: calls C while serving, with no tracing code of its own.
    let c = plain("c").await;
    let c_client = grpc(eps(&[&c]), ServiceConfig::default());
    let mut b_behaviour = Behaviour::named("b");
    b_behaviour.downstream = Some(c_client.channel(SVC).unwrap());
    let b = start(b_behaviour, Acceptor::plaintext(), None).await;
    let a_client = grpc(eps(&[&b]), ServiceConfig::default());
    let seen = |s: &Server| {
        let tp = s.behaviour.seen_traceparent.lock().unwrap().clone();
        TraceContext::parse(&tp.expect("no traceparent arrived"), None).unwrap()
    };

    // The caller's own traceparent reaches B unchanged, and C sees the same trace with B's
    // hop as its parent.
    let sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut request = tonic::Request::new(req(1));
    request
        .metadata_mut()
        .insert("traceparent", sent.parse().unwrap());
    reviews(&a_client).get_reviews(request).await.unwrap();
    let (at_b, at_c) = (seen(&b), seen(&c));
    assert_eq!(at_b.traceparent(), sent);
    assert_eq!(at_c.trace_id(), at_b.trace_id());
    assert_ne!(at_c.span_id(), at_b.span_id());

    // Without one, the mesh channel starts a trace, and C continues it.
    reviews(&a_client).get_reviews(req(2)).await.unwrap();
    let (at_b, at_c) = (seen(&b), seen(&c));
    assert_ne!(
        at_b.trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(at_c.trace_id(), at_b.trace_id());
}

#[tokio::test]
async fn calls_are_counted_by_grpc_status_from_trailers() {
    let (a, b) = (plain("a").await, plain("b").await);
    b.behaviour.mode.store(INVALID_ARGUMENT, Ordering::SeqCst);
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    let client = grpc_with(
        eps(&[&a, &b]),
        round_robin(),
        ClientSettings {
            telemetry: Some(telemetry.clone()),
            ..ClientSettings::default()
        },
    );
    let mut oks = 0;
    for i in 0..10 {
        if reviews(&client).get_reviews(req(i)).await.is_ok() {
            oks += 1;
        }
    }
    // A server stream whose status comes after its messages.
    let mut stream = reviews(&client)
        .watch_reviews(req(1))
        .await
        .map(|s| s.into_inner());
    if let Ok(s) = &mut stream {
        while let Ok(Some(_)) = s.message().await {}
    }
    let snap = telemetry.snapshot();
    let dest = &snap.destinations[0];
    let count = |status: &str| {
        dest.requests
            .iter()
            .find(|c| c.status == status)
            .map_or(0, |c| c.count)
    };
    assert_eq!(count("OK"), oks + 1, "{:?}", dest.requests);
    assert_eq!(count("INVALID_ARGUMENT"), 10 - oks, "{:?}", dest.requests);
    assert_eq!(dest.latency.count, 11);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(
            r#"mesh_client_requests_total{service="reviews.test:9080",status="INVALID_ARGUMENT",outcome="success"}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn servers_count_calls_by_grpc_status_from_headers_and_trailers() {
    let telemetry = Telemetry::without_registry();
    let mut behaviour = Behaviour::named("a");
    // Streams in mode OK wait for this after their first message: never released here.
    behaviour.release = Some(std::sync::Arc::new(tokio::sync::Notify::new()));
    let a = start_with(behaviour, Acceptor::plaintext(), None, telemetry.clone()).await;
    let client = grpc(eps(&[&a]), ServiceConfig::default());
    let mut reviews = reviews(&client);

    // OK: a normal response, its status in the trailers.
    reviews.get_reviews(req(1)).await.unwrap();
    // INVALID_ARGUMENT: a trailers-only response, the status in the headers.
    a.behaviour.mode.store(INVALID_ARGUMENT, Ordering::SeqCst);
    reviews.get_reviews(req(2)).await.unwrap_err();
    // UNAVAILABLE after the first message of a stream: in the trailers.
    a.behaviour.mode.store(UNAVAILABLE, Ordering::SeqCst);
    let mut stream = reviews.watch_reviews(req(3)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    assert_eq!(
        stream.message().await.unwrap_err().code(),
        Code::Unavailable
    );
    // A stream the caller abandons before its end: cancelled.
    a.behaviour.mode.store(OK, Ordering::SeqCst);
    let mut stream = reviews.watch_reviews(req(4)).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    // The open stream (earlier calls' bodies are dropped once sent, which may trail the
    // client's reading them by a moment).
    assert!(
        eventually(Duration::from_secs(5), async || {
            telemetry.snapshot().inbound[0].in_flight == 1
        })
        .await,
        "{:?}",
        telemetry.snapshot().inbound
    );
    drop(stream);

    assert!(
        eventually(Duration::from_secs(5), async || {
            let inbound = telemetry.snapshot().inbound;
            inbound.len() == 1 && inbound[0].in_flight == 0
        })
        .await,
        "{:?}",
        telemetry.snapshot().inbound
    );
    let inbound = telemetry.snapshot().inbound.remove(0);
    assert_eq!(inbound.caller, "none", "plaintext callers have no identity");
    let count = |status: &str| {
        inbound
            .requests
            .iter()
            .find(|c| c.status == status)
            .map(|c| (c.count, c.outcome))
    };
    assert_eq!(count("OK"), Some((1, "success")));
    assert_eq!(count("INVALID_ARGUMENT"), Some((1, "success")));
    assert_eq!(count("UNAVAILABLE"), Some((1, "failure")));
    assert_eq!(count("cancelled"), Some((1, "error")));
    assert_eq!(inbound.requests.len(), 4, "{:?}", inbound.requests);
    assert_eq!(inbound.latency.count, 4);
}
