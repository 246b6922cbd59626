//! Security against real TLS handshakes on loopback: mTLS with SPIFFE identities, STRICT and
//! PERMISSIVE servers, rejection of missing / foreign / expired certificates, server identity
//! checks, authorization, rotation under load, and a foreign client (curl).

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use common::{
    get,
    pki::{Pki, id},
};
use http_body_util::{Empty, Full};
use mesh::{
    core::{
        Endpoint, Mesh, SpiffeId,
        authz::{Action, AuthorizationPolicy, Authorizer, From, Operation, Rule, Source, To},
        discover::StaticSource,
        identity::PeerIdentity,
        tls::{ServerTlsMode, TlsError, TlsFiles, TlsSettings, TlsStore},
    },
    hyper::{
        ClientSettings, Error, MeshClient,
        server::{Acceptor, AuthzLayer, serve},
    },
};
use tower::ServiceBuilder;

/// A mesh server: answers 200 with the caller's identity in `x-peer`.
async fn server(acceptor: Acceptor, authz: Option<Authorizer>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let peer = match req.extensions().get::<PeerIdentity>() {
            Some(PeerIdentity(Some(id))) => id.to_string(),
            _ => "plaintext".to_owned(),
        };
        Ok::<_, Infallible>(
            http::Response::builder()
                .header("x-peer", peer)
                .body(Full::new(Bytes::from("ok")))
                .unwrap(),
        )
    });
    let authz = AuthzLayer::new(Arc::new(authz.unwrap_or_default()));
    let svc = ServiceBuilder::new().layer(authz).service(app);
    tokio::spawn(serve(listener, acceptor, svc));
    addr
}

fn client(tls: Option<TlsStore>, endpoint: Endpoint) -> MeshClient<Empty<Bytes>> {
    let mesh = Mesh::builder()
        .service(
            "reviews.test:9080",
            StaticSource::new(vec![endpoint]).unwrap(),
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::with_settings(
        mesh,
        ClientSettings {
            tls,
            ..ClientSettings::default()
        },
    )
}

const URI: &str = "http://reviews.test:9080/reviews/1";

#[tokio::test]
async fn strict_mtls_carries_identities_both_ways() {
    let pki = Pki::new();
    let server_store = pki.store("reviews", "reviews");
    let addr = server(
        Acceptor::new(Some(server_store.clone()), ServerTlsMode::Strict).unwrap(),
        None,
    )
    .await;
    let client_store = pki.store("productpage", "productpage");
    let c = client(
        Some(client_store.clone()),
        Endpoint::new(addr).identity(id("reviews")),
    );
    for _ in 0..20 {
        let rsp = c.request(get(URI)).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.headers()["x-peer"], id("productpage").as_str());
    }
    // Connections are reused: one handshake for 20 requests.
    assert_eq!(client_store.handshakes(), 1);
    assert_eq!(server_store.handshakes(), 1);
}

#[tokio::test]
async fn strict_server_refuses_plaintext_and_clients_without_a_certificate() {
    let pki = Pki::new();
    let addr = server(
        Acceptor::new(Some(pki.store("reviews", "reviews")), ServerTlsMode::Strict).unwrap(),
        None,
    )
    .await;
    // Plaintext client.
    let err = client(None, Endpoint::new(addr))
        .request(get(URI))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Request { .. } | Error::Connect { .. }),
        "{err}"
    );
    // TLS without a client certificate.
    let err = common::pki::tls_get(addr, &pki.bundle(), None)
        .await
        .unwrap_err();
    assert!(
        err.contains("CertificateRequired") || err.contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_are_rejected() {
    let pki = Pki::new();
    let addr = server(
        Acceptor::new(Some(pki.store("reviews", "reviews")), ServerTlsMode::Strict).unwrap(),
        None,
    )
    .await;

    let other = Pki::named("foreign CA");
    let foreign = other.workload("intruder", "productpage");
    let err = common::pki::tls_get(addr, &pki.bundle(), Some(&foreign))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownCA"), "{err}");
    // A foreign CA that copies the real CA's name: its signature does not verify.
    let impostor = Pki::named("test CA");
    let forged = impostor.workload("forged", "productpage");
    let err = common::pki::tls_get(addr, &pki.bundle(), Some(&forged))
        .await
        .unwrap_err();
    assert!(
        err.contains("DecryptError") || err.contains("BadSignature"),
        "{err}"
    );

    let now = time::OffsetDateTime::now_utc();
    let expired = pki
        .ca
        .issue_valid(
            id("productpage"),
            &["localhost"],
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .unwrap();
    let (c, k) = expired.write(pki.dir.path(), "expired").unwrap();
    let expired_files = TlsFiles::new(c, k, pki.bundle());
    let err = common::pki::tls_get(addr, &pki.bundle(), Some(&expired_files))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    // The store refuses to load it in the first place.
    let load = TlsStore::load_unwatched(expired_files, TlsSettings::default()).unwrap_err();
    assert!(matches!(load, TlsError::Validity { .. }), "{load}");
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let pki = Pki::new();
    let addr = server(
        Acceptor::new(Some(pki.store("reviews", "reviews")), ServerTlsMode::Strict).unwrap(),
        None,
    )
    .await;
    let client_store = pki.store("productpage", "productpage");
    let c = client(
        Some(client_store.clone()),
        Endpoint::new(addr).identity(id("ratings")),
    );
    let err = c.request(get(URI)).await.unwrap_err();
    // Not retried: the same endpoint would prove the same wrong identity (one handshake, not
    // one per attempt).
    let name = "reviews.test:9080".parse().unwrap();
    assert_eq!(c.stats(&name).unwrap().retries.retries, 0);
    let failed: u64 = client_store
        .handshake_counts()
        .client
        .failed
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failed, 1, "{:?}", client_store.handshake_counts());
    match &err {
        Error::IdentityMismatch { mismatch, .. } => {
            assert_eq!(mismatch.expected, id("ratings"));
            assert_eq!(mismatch.actual, Some(id("reviews")));
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("sa/ratings") && msg.contains("sa/reviews"),
        "{msg}"
    );
}

fn allow(name: &str, principals: &[&str], paths: &[&str]) -> AuthorizationPolicy {
    AuthorizationPolicy {
        name: name.into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![From {
                source: Source {
                    principals: principals.iter().map(|s| s.to_string()).collect(),
                },
            }],
            to: if paths.is_empty() {
                vec![]
            } else {
                vec![To {
                    operation: Operation {
                        paths: paths.iter().map(|s| s.to_string()).collect(),
                        methods: vec![],
                    },
                }]
            },
        }],
    }
}

#[tokio::test]
async fn authorization_denies_unknown_principals_and_deny_beats_allow() {
    let pki = Pki::new();
    let authz = Authorizer::new(vec![
        allow("callers", &["cluster.local/ns/default/*"], &["/reviews/*"]),
        AuthorizationPolicy {
            name: "no-ratings".into(),
            action: Action::Deny,
            rules: vec![Rule {
                from: vec![From {
                    source: Source {
                        principals: vec!["*/sa/ratings".into()],
                    },
                }],
                to: vec![],
            }],
        },
    ])
    .unwrap();
    let addr = server(
        Acceptor::new(Some(pki.store("reviews", "reviews")), ServerTlsMode::Strict).unwrap(),
        Some(authz),
    )
    .await;
    let as_sa = |sa: &str| {
        client(
            Some(pki.store(sa, sa)),
            Endpoint::new(addr).identity(id("reviews")),
        )
    };
    assert_eq!(
        as_sa("productpage")
            .request(get(URI))
            .await
            .unwrap()
            .status(),
        200
    );
    // Allowed by the ALLOW policy's prefix, denied by the DENY policy.
    assert_eq!(
        as_sa("ratings").request(get(URI)).await.unwrap().status(),
        403
    );
    // Outside the allowed paths.
    let rsp = as_sa("productpage")
        .request(get("http://reviews.test:9080/admin"))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 403);

    // A principal of another namespace matches no ALLOW rule.
    let other_ns: SpiffeId = "spiffe://cluster.local/ns/other/sa/productpage"
        .parse()
        .unwrap();
    let cert = pki.ca.issue(other_ns, &[], 1).unwrap();
    let (c, k) = cert.write(pki.dir.path(), "otherns").unwrap();
    let store = TlsStore::load_unwatched(TlsFiles::new(c, k, pki.bundle()), TlsSettings::default())
        .unwrap();
    let rsp = client(Some(store), Endpoint::new(addr).identity(id("reviews")))
        .request(get(URI))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 403);
}

#[tokio::test]
async fn permissive_accepts_plaintext_and_mtls_on_one_port() {
    let pki = Pki::new();
    let addr = server(
        Acceptor::new(
            Some(pki.store("reviews", "reviews")),
            ServerTlsMode::Permissive,
        )
        .unwrap(),
        None,
    )
    .await;
    let plain = client(None, Endpoint::new(addr))
        .request(get(URI))
        .await
        .unwrap();
    assert_eq!(plain.headers()["x-peer"], "plaintext");
    let mtls = client(
        Some(pki.store("productpage", "productpage")),
        Endpoint::new(addr).identity(id("reviews")),
    )
    .request(get(URI))
    .await
    .unwrap();
    assert_eq!(mtls.headers()["x-peer"], id("productpage").as_str());
}

#[tokio::test]
async fn rotation_under_continuous_load_fails_no_request() {
    let pki = Pki::new();
    let files = pki.workload("reviews", "reviews");
    let server_store = TlsStore::load(files.clone(), TlsSettings::default()).unwrap();
    let addr = server(
        Acceptor::new(Some(server_store.clone()), ServerTlsMode::Strict).unwrap(),
        None,
    )
    .await;
    let c = client(
        Some(pki.store("productpage", "productpage")),
        Endpoint::new(addr).identity(id("reviews")),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (c, stop, ok, failed) = (c.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 20_000 {
                    n += 1;
                    let mut req = get(URI);
                    if i == 0 {
                        // One task forces a new connection (and handshake) per request.
                        req.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    match c.request(req).await {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Bad material first: rejected, the old stays.
    std::fs::write(&files.cert_chain, "not a certificate").unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), async || server_store
            .last_error()
            .is_some())
        .await
    );
    assert_eq!(server_store.reloads(), 0);
    // A key that does not match.
    let other = pki.ca.issue(id("reviews"), &["localhost"], 1).unwrap();
    std::fs::write(&files.cert_chain, &other.chain_pem).unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), async || {
            matches!(
                server_store.last_error(),
                Some(TlsError::KeyMismatch { .. })
            )
        })
        .await
    );
    // Then good new material (key written first, then the certificate).
    let before = server_store.handshakes();
    std::fs::write(&files.key, &other.key_pem).unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), async || server_store.reloads()
            >= 1)
        .await
    );
    assert!(server_store.last_error().is_none());
    assert!(
        common::eventually(Duration::from_secs(10), async || server_store.handshakes()
            > before + 10)
        .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} ok",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 100);
    // New handshakes present the new certificate.
    let presented = presented_cert(addr, &pki).await;
    assert_eq!(presented, pem_der(&other.chain_pem));
}

#[tokio::test]
async fn curl_with_a_client_certificate_is_served_and_without_one_refused() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is not installed: run ./scripts/test, which installs it");
    }
    let pki = Pki::new();
    let addr = server(
        Acceptor::new(Some(pki.store("reviews", "reviews")), ServerTlsMode::Strict).unwrap(),
        None,
    )
    .await;
    let curl_files = pki.workload("curl", "curl");
    let url = format!("https://localhost:{}/reviews/1", addr.port());
    let bundle = pki.bundle();
    let out = tokio::task::spawn_blocking(move || {
        let run = |with_cert: bool| {
            let mut cmd = std::process::Command::new("curl");
            cmd.args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
            ])
            .arg(&bundle);
            if with_cert {
                cmd.arg("--cert")
                    .arg(&curl_files.cert_chain)
                    .arg("--key")
                    .arg(&curl_files.key);
            }
            cmd.arg(&url);
            cmd.output().unwrap()
        };
        (run(true), run(false))
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.0.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    assert_ne!(String::from_utf8_lossy(&out.1.stdout), "200");
    assert!(
        !out.1.status.success(),
        "curl without a certificate must fail"
    );
}

// --- raw rustls clients, for what the mesh client would never do ---

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The certificate a server presents to a new connection.
async fn presented_cert(addr: SocketAddr, pki: &Pki) -> Vec<u8> {
    let client_files = pki.workload("probe", "probe");
    let connector = tokio_rustls::TlsConnector::from(common::pki::client_config(
        &pki.bundle(),
        Some(&client_files),
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
