//! Counters of the control path and of servers: config reloads and rejections, unroutable
//! requests, TLS handshakes by side and failure reason, inbound requests by caller identity.

use super::*;

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
