//! The `mtls` scenario's pieces: a development PKI, a plain rustls+hyper mTLS backend and client
//! (no mesh), and a mesh server (acceptor + authorization) for the mesh variant.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use mesh::{
    core::{
        SpiffeId,
        authz::{Action, AuthorizationPolicy, Authorizer, From, Rule, Source},
        dev_ca::DevCa,
        tls::{ServerTlsMode, TlsFiles, TlsSettings, TlsStore},
    },
    hyper::{
        client::EndpointStream,
        server::{Acceptor, AuthzLayer, serve},
    },
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

use crate::load::Target;

pub fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .expect("valid SPIFFE ID")
}

/// Certificates for a server (`reviews`) and a client (`productpage`), in a temp dir.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub server: TlsFiles,
    pub client: TlsFiles,
}

impl Pki {
    pub fn new() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ca = DevCa::new("bench CA").map_err(|e| e.to_string())?;
        ca.write(dir.path()).map_err(|e| e.to_string())?;
        let bundle = dir.path().join("ca.pem");
        let files = |name: &str| -> Result<TlsFiles, String> {
            let cert = ca
                .issue(id(name), &["localhost", "127.0.0.1"], 1)
                .map_err(|e| e.to_string())?;
            let (c, k) = cert.write(dir.path(), name).map_err(|e| e.to_string())?;
            Ok(TlsFiles::new(c, k, bundle.clone()))
        };
        let server = files("reviews")?;
        let client = files("productpage")?;
        Ok(Self {
            _dir: dir,
            server,
            client,
        })
    }
}

fn ok_response() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}

fn roots(files: &TlsFiles) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&files.trust_bundle).expect("bundle") {
        roots.add(c.expect("CA cert")).expect("valid CA");
    }
    roots
}

fn chain_and_key(files: &TlsFiles) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(&files.cert_chain)
        .expect("chain")
        .map(|c| c.expect("cert"))
        .collect();
    (
        chain,
        PrivateKeyDer::from_pem_file(&files.key).expect("key"),
    )
}

/// A plain rustls + hyper mTLS server (TLS 1.3, client certificates required), no mesh.
pub struct RawTlsBackend {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawTlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn raw_tls_backend(files: &TlsFiles) -> RawTlsBackend {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(files)),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let (chain, key) = chain_and_key(files);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handshakes = Arc::new(AtomicU64::new(0));
    let count = handshakes.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(ok_response())
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    RawTlsBackend {
        addr,
        handshakes,
        task,
    }
}

/// The mesh server: STRICT mTLS acceptor, an authorization policy allowing the client, the app.
pub async fn mesh_backend(store: TlsStore) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let authz = Authorizer::new(vec![AuthorizationPolicy {
        name: "bench".into(),
        action: Action::Allow,
        rules: vec![Rule {
            from: vec![From {
                source: Source {
                    principals: vec!["cluster.local/ns/default/sa/productpage".into()],
                },
            }],
            to: vec![],
        }],
    }])
    .expect("valid policy");
    let app = ServiceBuilder::new()
        .layer(AuthzLayer::new(Arc::new(authz)))
        .service_fn(|_req: Request<Incoming>| async { Ok::<_, Infallible>(ok_response()) });
    let acceptor = Acceptor::new(Some(store), ServerTlsMode::Strict).expect("acceptor");
    tokio::spawn(serve(listener, acceptor, app));
    addr
}

pub fn store(files: &TlsFiles) -> TlsStore {
    TlsStore::load_unwatched(files.clone(), TlsSettings::default()).expect("valid bench material")
}

/// hyper-util's client over a plain rustls mTLS connector (what an application without a mesh
/// would write).
#[derive(Clone)]
pub struct RawTlsConnector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    pub handshakes: Arc<AtomicU64>,
}

impl tower::Service<http::Uri> for RawTlsConnector {
    type Response = EndpointStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<EndpointStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (mut http, tls, count) = (self.http.clone(), self.tls.clone(), self.handshakes.clone());
        Box::pin(async move {
            let tcp = tower::Service::call(&mut http, uri).await?;
            let name = ServerName::try_from("localhost").expect("valid name");
            let stream = tls.connect(name, tcp.into_inner()).await?;
            count.fetch_add(1, Ordering::Relaxed);
            Ok(EndpointStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

pub struct RawTls {
    client: Client<RawTlsConnector, Empty<Bytes>>,
    uri: http::Uri,
}

impl RawTls {
    pub fn new(files: &TlsFiles, addr: SocketAddr) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = chain_and_key(files);
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots(files))
            .with_client_auth_cert(chain, key)
            .expect("client cert");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = RawTlsConnector {
            http,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            handshakes: Arc::new(AtomicU64::new(0)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            uri: format!("http://{addr}/").parse().expect("valid URI"),
        }
    }
}

impl Target for RawTls {
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let fut = self.client.request(
            Request::get(self.uri.clone())
                .body(Empty::new())
                .expect("valid request"),
        );
        async move { crate::targets::finish(fut.await).await }
    }
}
