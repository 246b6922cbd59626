//! W3C trace context through mesh clients and servers: two HTTP hops, tracestate kept, a
//! streaming body continuing the trace.

use super::*;

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
