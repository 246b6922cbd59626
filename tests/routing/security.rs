//! AuthorizationPolicy and PeerAuthentication documents enforced by the server layers, and
//! followed live.

use std::{convert::Infallible, net::SocketAddr};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use mesh::{
    core::{
        Endpoint, Mesh,
        config::{ConfigStore, LoadOptions, Workload, load_texts},
        discover::StaticSource,
        tls::TlsStore,
    },
    hyper::{
        ClientSettings, Error, MeshClient,
        server::{Acceptor, AuthzLayer, serve},
    },
};
use tower::Layer;

use super::common::{
    get,
    pki::{Pki, id},
};

const RATINGS: &str = "ratings.test:9080";

fn docs(mtls: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default}}
spec:
  mtls: {{mode: {mtls}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-viewer}}
spec:
  selector:
    matchLabels: {{app: ratings}}
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/bookinfo-reviews"]
    to:
    - operation:
        methods: [GET]
        paths: ["/ratings/*"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: blocked}}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-block]
      values: ["1"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: not-for-me}}
spec:
  selector:
    matchLabels: {{app: details}}
  action: DENY
  rules: [{{}}]
"#
    )
}

fn set(mtls: &str) -> mesh::core::config::ConfigSet {
    load_texts(
        &[("security.yaml", &docs(mtls))],
        &Workload::new("default", [("app", "ratings"), ("version", "v1")]),
        &LoadOptions::default(),
    )
    .unwrap()
}

async fn ratings_server(pki: &Pki, config: ConfigStore) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = Acceptor::from_config(
        pki.store("ratings", "bookinfo-ratings"),
        config.clone(),
        addr.port(),
    )
    .unwrap();
    let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("5 stars"))))
    });
    tokio::spawn(serve(
        listener,
        acceptor,
        AuthzLayer::from_config(config).layer(app),
    ));
    addr
}

fn client(addr: SocketAddr, tls: Option<TlsStore>) -> MeshClient<Empty<Bytes>> {
    let endpoint = Endpoint::new(addr).identity(id("bookinfo-ratings"));
    let mesh = Mesh::builder()
        .service(RATINGS, StaticSource::new(vec![endpoint]).unwrap())
        .without_dns_fallback()
        .build()
        .unwrap();
    let mut config = mesh::core::ServiceConfig::default();
    if tls.is_none() {
        config.destination.tls.mode = mesh::core::tls::ClientTlsMode::Disable;
    }
    let mesh = if tls.is_none() {
        Mesh::builder()
            .service_with(
                RATINGS,
                StaticSource::new(vec![Endpoint::new(addr)]).unwrap(),
                config,
            )
            .without_dns_fallback()
            .build()
            .unwrap()
    } else {
        mesh
    };
    MeshClient::with_settings(
        mesh,
        ClientSettings {
            tls,
            ..ClientSettings::default()
        },
    )
}

async fn status(c: &MeshClient<Empty<Bytes>>, path: &str, block: bool) -> Result<u16, Error> {
    let mut req = get(&format!("http://{RATINGS}{path}"));
    if block {
        req.headers_mut().insert("x-block", "1".parse().unwrap());
    }
    c.request(req).await.map(|r| r.status().as_u16())
}

#[tokio::test]
async fn authorization_and_peer_authentication_documents_are_enforced_and_followed() {
    let pki = Pki::new();
    let config = ConfigStore::fixed(set("STRICT"));
    let addr = ratings_server(&pki, config.clone()).await;
    let reviews = client(addr, Some(pki.store("reviews", "bookinfo-reviews")));
    let productpage = client(addr, Some(pki.store("productpage", "bookinfo-productpage")));
    let plaintext = client(addr, None);

    assert_eq!(status(&reviews, "/ratings/0", false).await.unwrap(), 200);
    assert_eq!(
        status(&reviews, "/admin", false).await.unwrap(),
        403,
        "path not allowed"
    );
    assert_eq!(
        status(&reviews, "/ratings/0", true).await.unwrap(),
        403,
        "DENY on a header"
    );
    assert_eq!(
        status(&productpage, "/ratings/0", false).await.unwrap(),
        403,
        "principal not allowed"
    );
    let err = status(&plaintext, "/ratings/0", false).await.unwrap_err();
    assert!(
        matches!(err, Error::Request { .. } | Error::Connect { .. }),
        "STRICT refuses plaintext: {err}"
    );

    // PERMISSIVE, swapped in live: plaintext connects, and is denied by authorization (no
    // principal); mTLS callers are unaffected.
    config.replace(set("PERMISSIVE"));
    assert_eq!(status(&plaintext, "/ratings/0", false).await.unwrap(), 403);
    assert_eq!(status(&reviews, "/ratings/0", false).await.unwrap(), 200);
}
