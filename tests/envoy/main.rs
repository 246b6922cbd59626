//! Interop with Istio's sidecar, Envoy 1.40, as real processes on loopback, in both directions
//! and over HTTP/1.1 and HTTP/2, with certificates from one dev CA:
//!
//! - **mesh client → Envoy inbound sidecar → plain backend**: Envoy requires a client
//!   certificate with a URI SAN under `spiffe://cluster.local/`; the mesh client presents its
//!   SPIFFE certificate and verifies Envoy's SPIFFE ID. A plaintext client, a TLS client
//!   without a certificate, one from another CA and one from another trust domain are refused
//!   by Envoy; a mesh client expecting another identity refuses Envoy (`IdentityMismatch`).
//! - **plain client → Envoy outbound sidecar → mesh-hyper STRICT server**: Envoy presents its
//!   certificate and requires the server's exact SPIFFE ID; the mesh server sees Envoy's
//!   identity and authorizes it by principal (an ALLOW for another principal answers 403
//!   through Envoy); a mesh server with another identity is refused by Envoy (503).
//!
//! The Envoy bootstraps are the bench's (`examples/bench/sidecar/envoy.rs`). Envoy comes from
//! `scripts/sidecars` (`scripts/test` installs it); without it the tests are skipped, except
//! under CI (`CI` set), where they fail.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../examples/bench/sidecar/envoy.rs"]
mod envoy;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{
    get, peer_server,
    pki::{Pki, TD, id, tls_get},
};
use envoy::{Certs, Downstream, Proto, Upstream};
use http_body_util::{BodyExt, Empty};
use mesh::{
    core::{
        DestinationPolicy, Endpoint, Mesh, Protocol, ServiceConfig, SpiffeId,
        authz::{Action, AuthorizationPolicy, Authorizer, From, Rule, Source},
        discover::StaticSource,
        tls::{HandshakeFailure, ServerTlsMode, TlsFiles, TlsStore},
    },
    hyper::{ClientSettings, Error, MeshClient, server::Acceptor},
};

/// The Envoy binary, or `None` (after saying why on stderr) when it is not installed and the
/// run is not CI's. Looked up once per test binary.
fn envoy_binary() -> Option<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = BINARY.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sidecars");
        let out = Command::new(&script)
            .args(["--no-install", "envoy"])
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.lines().find_map(|l| l.strip_prefix("envoy ")) {
            Some(p) if out.status.success() => Ok(PathBuf::from(p.trim())),
            _ => Err(format!("scripts/sidecars exited with {}", out.status)),
        }
    });
    match found {
        Ok(p) => Some(p.clone()),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "Envoy 1.40 is not installed ({e}), and under CI scripts/test installs it"
            );
            eprintln!(
                "skipped: Envoy 1.40 is not installed; run scripts/sidecars envoy (scripts/test does)"
            );
            None
        }
    }
}

/// A running Envoy: killed by pid and waited on when dropped.
struct Envoy {
    child: Child,
    /// Its listener.
    listen: SocketAddr,
    /// Its stderr, kept for failure messages.
    log: PathBuf,
}

impl Envoy {
    /// Writes `name`'s bootstrap into `dir`, starts Envoy on it and waits (≤ 15 s) until its
    /// listener accepts connections.
    async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        down: Downstream,
        up: Upstream,
        proto: Proto,
    ) -> Self {
        let listen = match &down {
            Downstream::Plain(a) | Downstream::Mtls { addr: a, .. } => *a,
        };
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, envoy::bootstrap(name, &down, &up, proto))
            .expect("the bootstrap is written");
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("the log file is created");
        let child = Command::new(bin)
            .args(envoy::args(&config))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("Envoy starts");
        let mut envoy = Envoy { child, listen, log };
        // Envoy listens 0.2–0.6 s after its start.
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(listen).await.is_err() {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy {name} exited at start ({status}):\n{}", envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy {name} did not listen on {listen} within 15 s:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        envoy
    }

    /// What Envoy wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port for an Envoy listener.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Envoy's view of a workload's certificate files.
fn certs(files: &TlsFiles) -> Certs {
    Certs {
        ca: files.trust_bundle.clone(),
        cert: files.cert_chain.clone(),
        key: files.key.clone(),
    }
}

/// The service the mesh clients call (its one endpoint is an Envoy).
const SERVICE: &str = "reviews.test:9080";
/// A URI of it.
const URI: &str = "http://reviews.test:9080/reviews/1";

/// A mesh client of [`SERVICE`] at `endpoint`, over `protocol`, with mTLS when `tls` is set.
fn mesh_client(
    tls: Option<TlsStore>,
    endpoint: Endpoint,
    protocol: Protocol,
) -> MeshClient<Empty<Bytes>> {
    let config = ServiceConfig {
        destination: DestinationPolicy {
            protocol,
            ..Default::default()
        },
        ..ServiceConfig::default()
    };
    let source = StaticSource::new(vec![endpoint]).expect("one endpoint");
    let mesh = Mesh::builder()
        .service_with(SERVICE, source, config)
        .without_dns_fallback()
        .build()
        .expect("a mesh");
    MeshClient::with_settings(
        mesh,
        ClientSettings {
            tls,
            ..ClientSettings::default()
        },
    )
}

/// The mesh protocol matching an Envoy one.
fn protocol(proto: Proto) -> Protocol {
    match proto {
        Proto::Http1 => Protocol::Http1,
        Proto::H2 => Protocol::Http2,
    }
}

/// The HTTP version a backend reports in `x-seen-version` for `proto`.
fn version(proto: Proto) -> &'static str {
    match proto {
        Proto::Http1 => "HTTP/1.1",
        Proto::H2 => "HTTP/2.0",
    }
}

/// A mesh client through an Envoy inbound sidecar (mTLS downstream, plain upstream over
/// `proto`) to a plain backend.
async fn inbound(proto: Proto) {
    let Some(bin) = envoy_binary() else { return };
    let pki = Pki::new();
    let backend = common::backend("ok").await;
    let sidecar = Envoy::start(
        &bin,
        pki.dir.path(),
        "inbound",
        Downstream::Mtls {
            addr: free_addr(),
            certs: certs(&pki.workload("envoy-reviews", "reviews")),
            trust_domain: TD.into(),
        },
        Upstream::Plain(backend.addr),
        proto,
    )
    .await;
    let store = pki.store("productpage", "productpage");
    let client = mesh_client(
        Some(store.clone()),
        Endpoint::new(sidecar.listen).identity(id("reviews")),
        protocol(proto),
    );
    for _ in 0..5 {
        let rsp = client.request(get(URI)).await.unwrap_or_else(|e| {
            panic!("through Envoy: {e}\n{}", sidecar.log());
        });
        assert_eq!(rsp.status(), 200, "{}", sidecar.log());
        // The mesh client's leg (ALPN) and Envoy's upstream leg both speak `proto`.
        let expected = match proto {
            Proto::Http1 => http::Version::HTTP_11,
            Proto::H2 => http::Version::HTTP_2,
        };
        assert_eq!(rsp.version(), expected);
        assert_eq!(rsp.headers()["x-seen-version"], version(proto));
        let body = rsp.into_body().collect().await.expect("a body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(backend.hits(), 5);
    // Envoy keeps the connection: one handshake for the five requests.
    assert_eq!(store.handshakes(), 1);
}

/// mesh client → Envoy inbound → backend, HTTP/1.1 on both legs.
#[tokio::test]
async fn mesh_client_through_envoy_inbound_sidecar_http1() {
    inbound(Proto::Http1).await;
}

/// mesh client → Envoy inbound → backend, HTTP/2 on both legs (ALPN `h2`, then h2c).
#[tokio::test]
async fn mesh_client_through_envoy_inbound_sidecar_h2() {
    inbound(Proto::H2).await;
}

/// Envoy's inbound side refuses what is not a mesh workload; the mesh client refuses an Envoy
/// that is not the expected workload.
#[tokio::test]
async fn envoy_inbound_sidecar_refuses_callers_without_a_mesh_identity() {
    let Some(bin) = envoy_binary() else { return };
    let pki = Pki::new();
    let backend = common::backend("ok").await;
    let sidecar = Envoy::start(
        &bin,
        pki.dir.path(),
        "inbound",
        Downstream::Mtls {
            addr: free_addr(),
            certs: certs(&pki.workload("envoy-reviews", "reviews")),
            trust_domain: TD.into(),
        },
        Upstream::Plain(backend.addr),
        Proto::Http1,
    )
    .await;
    let addr = sidecar.listen;

    // Plaintext from a mesh client without TLS.
    let err = mesh_client(None, Endpoint::new(addr), Protocol::Http1)
        .request(get(URI))
        .await
        .expect_err("Envoy refuses plaintext");
    assert!(
        matches!(err, Error::Request { .. } | Error::Connect { .. }),
        "{err}"
    );
    // TLS without a client certificate.
    let err = tls_get(addr, &pki.bundle(), None)
        .await
        .expect_err("Envoy requires a client certificate");
    assert!(err.contains("CertificateRequired"), "{err}");
    // A certificate from another CA.
    let other = Pki::named("foreign CA");
    let foreign = other.workload("intruder", "productpage");
    let err = tls_get(addr, &pki.bundle(), Some(&foreign))
        .await
        .expect_err("Envoy refuses a foreign CA");
    assert!(err.contains("UnknownCA"), "{err}");
    // The right CA, but a SPIFFE ID outside the trust domain (Envoy's SAN prefix matcher).
    let outsider: SpiffeId = "spiffe://other.domain/ns/default/sa/productpage"
        .parse()
        .expect("a SPIFFE ID");
    let cert = pki
        .ca
        .issue(outsider, &["localhost"], 1)
        .expect("a certificate");
    let (c, k) = cert.write(pki.dir.path(), "outsider").expect("written");
    let err = tls_get(
        addr,
        &pki.bundle(),
        Some(&TlsFiles::new(c, k, pki.bundle())),
    )
    .await
    .expect_err("Envoy refuses another trust domain");
    assert!(err.contains("CertificateUnknown"), "{err}");
    // A certificate of the mesh's trust domain, through the same raw client: served.
    let member = pki.workload("member", "productpage");
    tls_get(addr, &pki.bundle(), Some(&member))
        .await
        .unwrap_or_else(|e| panic!("a mesh certificate is served: {e}\n{}", sidecar.log()));
    // None of the refused requests reached the backend.
    assert_eq!(backend.hits(), 1);

    // The mesh client refuses Envoy when Envoy proves another identity than expected.
    let store = pki.store("productpage", "productpage");
    let err = mesh_client(
        Some(store),
        Endpoint::new(addr).identity(id("ratings")),
        Protocol::Http1,
    )
    .request(get(URI))
    .await
    .expect_err("another identity is refused");
    match &err {
        Error::IdentityMismatch { mismatch, .. } => {
            assert_eq!(mismatch.expected, id("ratings"));
            assert_eq!(mismatch.actual, Some(id("reviews")));
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
    assert_eq!(backend.hits(), 1);
}

/// An ALLOW policy for one principal (`cluster.local/ns/default/sa/<sa>`).
fn allow_only(sa: &str) -> Authorizer {
    Authorizer::new(vec![AuthorizationPolicy {
        name: format!("only-{sa}"),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![From {
                source: Source {
                    principals: vec![format!("{TD}/ns/default/sa/{sa}")],
                },
            }],
            to: vec![],
        }],
    }])
    .expect("a valid policy")
}

/// An Envoy outbound sidecar in front of the mesh server at `server`, presenting the
/// `productpage` certificate and requiring `server_id`, over `proto` upstream.
async fn outbound_sidecar(
    bin: &Path,
    pki: &Pki,
    name: &str,
    server: SocketAddr,
    server_id: &SpiffeId,
    proto: Proto,
) -> Envoy {
    Envoy::start(
        bin,
        pki.dir.path(),
        name,
        Downstream::Plain(free_addr()),
        Upstream::Mtls {
            addr: server,
            certs: certs(&pki.workload(&format!("{name}-productpage"), "productpage")),
            server_id: server_id.to_string(),
            // Istio's SNI for an outbound cluster.
            sni: "outbound_.9080_._.reviews.default.svc.cluster.local".into(),
        },
        proto,
    )
    .await
}

/// A plain (non-mesh) HTTP client of an outbound sidecar: HTTP/1.1, or h2c with prior
/// knowledge when `proto` is HTTP/2 (as a gRPC application speaks to its sidecar).
async fn plain_get(sidecar: &Envoy, proto: Proto) -> http::Response<Bytes> {
    let mut builder =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
    builder.http2_only(proto == Proto::H2);
    let client = builder.build_http::<Empty<Bytes>>();
    let uri = format!("http://{}/reviews/1", sidecar.listen);
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(get(&uri)))
        .await
        .expect("Envoy answers within 10 s")
        .unwrap_or_else(|e| panic!("GET through Envoy: {e}\n{}", sidecar.log()));
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("a body").to_bytes();
    http::Response::from_parts(parts, body)
}

/// A plain client through an Envoy outbound sidecar (plain downstream, mTLS upstream over
/// `proto`) to a STRICT mesh-hyper server that authorizes by principal.
async fn outbound(proto: Proto) {
    let Some(bin) = envoy_binary() else { return };
    let pki = Pki::new();
    let store = pki.store("reviews", "reviews");
    let acceptor = Acceptor::new(Some(store.clone()), ServerTlsMode::Strict).expect("an acceptor");
    let server = peer_server(acceptor, Some(allow_only("productpage"))).await;
    let sidecar = outbound_sidecar(&bin, &pki, "outbound", server, &id("reviews"), proto).await;
    for _ in 0..5 {
        let rsp = plain_get(&sidecar, proto).await;
        assert_eq!(rsp.status(), 200, "{:?}\n{}", rsp.body(), sidecar.log());
        // Envoy's certificate, verified by the mesh server, is the request's identity.
        assert_eq!(rsp.headers()["x-peer"], id("productpage").as_str());
        // Envoy's upstream leg (ALPN) speaks `proto`.
        assert_eq!(rsp.headers()["x-seen-version"], version(proto));
        assert_eq!(&rsp.body()[..], b"ok");
    }
    // Envoy keeps the connection: one handshake for the five requests.
    assert_eq!(store.handshakes(), 1);

    // The same path, but the server allows another principal only: Envoy relays its 403.
    let acceptor = Acceptor::new(
        Some(pki.store("reviews2", "reviews")),
        ServerTlsMode::Strict,
    )
    .expect("an acceptor");
    let denying = peer_server(acceptor, Some(allow_only("ratings"))).await;
    let sidecar = outbound_sidecar(&bin, &pki, "denied", denying, &id("reviews"), proto).await;
    let rsp = plain_get(&sidecar, proto).await;
    assert_eq!(rsp.status(), 403, "{:?}\n{}", rsp.body(), sidecar.log());
}

/// plain client → Envoy outbound → STRICT mesh server, HTTP/1.1 on both legs.
#[tokio::test]
async fn envoy_outbound_sidecar_to_strict_mesh_server_http1() {
    outbound(Proto::Http1).await;
}

/// plain client → Envoy outbound → STRICT mesh server, h2c then HTTP/2 over mTLS.
#[tokio::test]
async fn envoy_outbound_sidecar_to_strict_mesh_server_h2() {
    outbound(Proto::H2).await;
}

/// Envoy's outbound side requires the exact SPIFFE ID of the mesh server.
#[tokio::test]
async fn envoy_outbound_sidecar_refuses_a_mesh_server_with_another_identity() {
    let Some(bin) = envoy_binary() else { return };
    let pki = Pki::new();
    let store = pki.store("details", "details");
    let acceptor = Acceptor::new(Some(store.clone()), ServerTlsMode::Strict).expect("an acceptor");
    let server = peer_server(acceptor, None).await;
    let sidecar =
        outbound_sidecar(&bin, &pki, "outbound", server, &id("reviews"), Proto::Http1).await;
    let rsp = plain_get(&sidecar, Proto::Http1).await;
    // Envoy fails the upstream handshake (the URI SAN is not the exact one), alerts the server
    // and answers 503; no retry (none configured, as Istio's default).
    assert_eq!(rsp.status(), 503, "{:?}\n{}", rsp.body(), sidecar.log());
    let body = String::from_utf8_lossy(rsp.body());
    assert!(body.starts_with("upstream connect error"), "{body}");
    let counts = store.handshake_counts().server;
    assert_eq!(counts.completed, 0, "{counts:?}");
    assert_eq!(counts.failed, vec![(HandshakeFailure::PeerAlert, 1)]);
}
