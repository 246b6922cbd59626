//! Routing with Istio documents against real servers on loopback: weighted splits, header
//! matches, path routing and rewrites, faults, mirrors, live reloads, host names.

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod reload;
mod security;

use std::{collections::HashMap, path::PathBuf};

use bytes::Bytes;
use common::{Backend, backend, backend_of, get};
use http_body_util::Empty;
use mesh::{
    core::{Mesh, ServiceName},
    hyper::MeshClient,
};

/// Three versions of reviews, an endpoints file listing them with their labels, and a
/// directory for Istio documents.
struct Fixture {
    v1: Backend,
    #[allow(dead_code)] // kept alive: the endpoints file lists them
    v2: Backend,
    #[allow(dead_code)]
    v3: Backend,
    dir: tempfile::TempDir,
}

const DR: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
  - name: v3
    labels: {version: v3}
"#;

impl Fixture {
    async fn new() -> Self {
        let (v1, v2, v3) = (
            backend("v1").await,
            backend("v2").await,
            backend("v3").await,
        );
        let dir = tempfile::tempdir().unwrap();
        let mut eps = String::from("services:\n  reviews.default:9080:\n");
        for b in [&v1, &v2, &v3] {
            eps.push_str(&format!(
                "    - address: {}\n      labels: {{ version: {} }}\n",
                b.addr, b.name
            ));
        }
        std::fs::write(dir.path().join("endpoints.yaml"), eps).unwrap();
        std::fs::create_dir(dir.path().join("istio")).unwrap();
        std::fs::write(dir.path().join("istio/destination-rule.yaml"), DR).unwrap();
        Self { v1, v2, v3, dir }
    }

    fn docs(&self) -> PathBuf {
        self.dir.path().join("istio")
    }

    /// Writes the reviews VirtualService (atomically, as deploy tools do).
    fn write_vs(&self, text: &str) {
        let tmp = self.dir.path().join("vs.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.docs().join("virtual-service.yaml")).unwrap();
    }

    fn mesh(&self) -> Mesh {
        Mesh::builder()
            .endpoints_file(self.dir.path().join("endpoints.yaml"), Default::default())
            .istio_config(self.docs())
            .without_dns_fallback()
            .build()
            .unwrap()
    }

    fn client(&self) -> MeshClient<Empty<Bytes>> {
        MeshClient::new(self.mesh())
    }
}

/// A VirtualService for reviews with `http` routes (YAML under `http:`).
fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

fn weighted(weights: &[(&str, u32)]) -> String {
    let mut s = String::from("  - route:\n");
    for (subset, w) in weights {
        s.push_str(&format!(
            "    - destination: {{host: reviews, subset: {subset}}}\n      weight: {w}\n"
        ));
    }
    vs(&s)
}

/// Sends `n` requests, `concurrency` at a time; counts answers by backend (errors as "error").
async fn spread(
    client: &MeshClient<Empty<Bytes>>,
    uri: &str,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(concurrency);
        left -= batch;
        let futs: Vec<_> = (0..batch).map(|_| client.request(get(uri))).collect();
        for r in futures_util::future::join_all(futs).await {
            let key = match r {
                Ok(rsp) => backend_of(&rsp),
                Err(_) => "error".to_owned(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

const URI: &str = "http://reviews:9080/reviews/1";

#[tokio::test]
async fn a_90_10_split_is_within_two_points_over_10000_requests() {
    let f = Fixture::new().await;
    f.write_vs(&weighted(&[("v1", 90), ("v3", 10)]));
    let client = f.client();
    let counts = spread(&client, URI, 10_000, 32).await;
    let v1 = counts.get("v1").copied().unwrap_or(0) as f64 / 100.0;
    let v3 = counts.get("v3").copied().unwrap_or(0) as f64 / 100.0;
    assert!((88.0..=92.0).contains(&v1), "v1 got {v1} %: {counts:?}");
    assert!((8.0..=12.0).contains(&v3), "v3 got {v3} %: {counts:?}");
    assert_eq!(counts.get("v2"), None, "{counts:?}");
    assert_eq!(counts.get("error"), None, "{counts:?}");
}

#[tokio::test]
async fn jason_always_reaches_v2_and_everyone_else_v1() {
    let f = Fixture::new().await;
    f.write_vs(&vs("  - match:\n    - headers:\n        end-user: {exact: jason}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n"));
    let client = f.client();
    for i in 0..200 {
        let mut req = get(URI);
        let user = if i % 2 == 0 { "jason" } else { "alice" };
        req.headers_mut().insert("end-user", user.parse().unwrap());
        let rsp = client.request(req).await.unwrap();
        assert_eq!(
            backend_of(&rsp),
            if user == "jason" { "v2" } else { "v1" },
            "request {i} as {user}"
        );
    }
}

#[tokio::test]
async fn paths_route_by_prefix_with_rewrites_and_header_operations() {
    let f = Fixture::new().await;
    f.write_vs(&vs(r#"  - name: api-v3
    match:
    - uri: {prefix: /v3/}
    rewrite: {uri: /}
    headers:
      request:
        set: {x-routed-by: mesh}
      response:
        add: {x-route: api-v3}
    route:
    - destination: {host: reviews, subset: v3}
  - match:
    - uri: {regex: "/reviews/[0-9]+"}
      method: {exact: GET}
    route:
    - destination: {host: reviews, subset: v2}
"#));
    let client = f.client();
    let rsp = client
        .request(get("http://reviews:9080/v3/reviews/7"))
        .await
        .unwrap();
    assert_eq!(backend_of(&rsp), "v3");
    assert_eq!(
        rsp.headers()["x-seen-path"],
        "/reviews/7",
        "the prefix was rewritten"
    );
    assert_eq!(rsp.headers()["x-route"], "api-v3");
    let rsp = client
        .request(get("http://reviews:9080/reviews/42"))
        .await
        .unwrap();
    assert_eq!(backend_of(&rsp), "v2");
    // The regex matches the whole path only, and nothing else matches: no route.
    let err = client
        .request(get("http://reviews:9080/reviews/42/x"))
        .await
        .unwrap_err();
    assert!(matches!(err, mesh::hyper::Error::NoRoute { .. }), "{err}");
    assert!(err.to_string().contains("no route"), "{err}");
}

#[tokio::test]
async fn every_spelling_of_the_host_reaches_the_routed_service() {
    let f = Fixture::new().await;
    f.write_vs(&weighted(&[("v2", 1)]));
    let client = f.client();
    for authority in [
        "reviews:9080",
        "reviews.default:9080",
        "reviews.default.svc:9080",
        "reviews.default.svc.cluster.local:9080",
        "REVIEWS.default.svc.cluster.local.:9080",
    ] {
        let rsp = client
            .request(get(&format!("http://{authority}/")))
            .await
            .unwrap();
        assert_eq!(backend_of(&rsp), "v2", "{authority}");
    }
    let name: ServiceName = "reviews.default.svc.cluster.local:9080".parse().unwrap();
    assert!(
        client.stats(&name).is_some(),
        "one destination for every spelling"
    );
}

#[tokio::test]
async fn short_names_resolve_in_the_workload_namespace() {
    // The workload runs in `prod`; the documents name `reviews` in `prod`, and the endpoints
    // file lists the service as `reviews.prod`.
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let dir = tempfile::tempdir().unwrap();
    let eps = format!(
        "services:\n  reviews.prod:9080:\n    - {{address: {}, labels: {{version: v1}}}}\n    - {{address: {}, labels: {{version: v2}}}}\n",
        v1.addr, v2.addr
    );
    std::fs::write(dir.path().join("endpoints.yaml"), eps).unwrap();
    let docs = format!(
        "{}\n---\n{}",
        DR.replace("name: reviews\n", "name: reviews\n  namespace: prod\n"),
        weighted(&[("v2", 1)]).replace("name: reviews\n", "name: reviews\n  namespace: prod\n")
    );
    std::fs::write(dir.path().join("docs.yaml"), docs).unwrap();
    let mesh = Mesh::builder()
        .namespace("prod")
        .endpoints_file(dir.path().join("endpoints.yaml"), Default::default())
        .istio_config(dir.path().join("docs.yaml"))
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::<Empty<Bytes>>::new(mesh);
    for authority in [
        "reviews:9080",
        "reviews.prod:9080",
        "reviews.prod.svc.cluster.local:9080",
    ] {
        let rsp = client
            .request(get(&format!("http://{authority}/")))
            .await
            .unwrap();
        assert_eq!(backend_of(&rsp), "v2", "{authority}");
    }
}

#[tokio::test]
async fn live_explanations_and_the_config_version_are_in_the_admin_service() {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use mesh::core::telemetry::{Registry, Telemetry};
    use mesh::hyper::admin::AdminService;

    let f = Fixture::new().await;
    f.write_vs(&vs("  - match:\n    - headers:\n        end-user: {exact: jason}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n"));
    let mesh = f.mesh();
    let version = mesh.config().unwrap().version();
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    telemetry.track_mesh(&mesh);
    let admin = AdminService::new(Arc::new(registry), telemetry);
    let body = |rsp: http::Response<http_body_util::Full<Bytes>>| async move {
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    let get = http::Method::GET;
    let text = body(admin.respond_uri(
        &get,
        "/mesh/explain",
        Some("url=http%3A%2F%2Freviews%3A9080%2Freviews%2F1&header=end-user:jason&format=text"),
    ))
    .await;
    assert!(text.contains("MATCH spec.http[0]"), "{text}");
    assert!(
        text.contains(&format!("endpoint {}", f.v2.addr)),
        "live endpoints of subset v2: {text}"
    );
    assert!(!text.contains(&format!("endpoint {}", f.v1.addr)), "{text}");
    let json =
        body(admin.respond_uri(&get, "/mesh/explain", Some("url=http://reviews:9080/"))).await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["route"]["destinations"][0]["selector"], "version=v1");
    let metrics = body(admin.respond(&get, "/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mesh_config_version{")
                && l.contains(&format!("version=\"{version}\""))
                && l.ends_with(" 1")),
        "{metrics}"
    );
    let debug = body(admin.respond(&get, "/mesh/debug")).await;
    assert!(debug.contains(&version), "{debug}");
    assert_eq!(admin.respond_uri(&get, "/mesh/explain", None).status(), 400);
}
