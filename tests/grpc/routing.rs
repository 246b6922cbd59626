//! gRPC routed by Istio documents through `MeshChannel`: methods are paths, a ServiceEntry
//! lists the endpoints, an injected abort gives the status asked.

use mesh::{
    core::{
        Mesh,
        config::{ConfigStore, LoadOptions, Workload, load_texts},
    },
    hyper::server::Acceptor,
    tonic::GrpcClient,
};
use tonic::Code;

use super::{
    req,
    support::{Behaviour, bookinfo::reviews_client::ReviewsClient, start},
};

fn docs(v1: u16, v2: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.test]
  ports: [{{number: 9080, name: grpc, protocol: GRPC}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{grpc: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{grpc: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.test
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews.test]
  http:
  - match:
    - headers: {{x-fault: {{exact: "yes"}}}}
    fault:
      abort: {{grpcStatus: RESOURCE_EXHAUSTED, percentage: {{value: 100}}}}
    route:
    - destination: {{host: reviews.test, subset: v1}}
  - match:
    - uri: {{exact: /bookinfo.v1.Reviews/WatchReviews}}
    route:
    - destination: {{host: reviews.test, subset: v2}}
  - match:
    - uri: {{prefix: /bookinfo.v1.Reviews/}}
    route:
    - destination: {{host: reviews.test, subset: v1}}
"#
    )
}

#[tokio::test]
async fn grpc_methods_route_as_paths_and_an_abort_gives_the_status_asked() {
    let v1 = start(Behaviour::named("v1"), Acceptor::plaintext(), None).await;
    let v2 = start(Behaviour::named("v2"), Acceptor::plaintext(), None).await;
    let set = load_texts(
        &[("reviews.yaml", &docs(v1.addr.port(), v2.addr.port()))],
        &Workload::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let mesh = Mesh::builder()
        .config_store(ConfigStore::fixed(set))
        .without_dns_fallback()
        .build()
        .unwrap();
    let grpc = GrpcClient::new(mesh);
    let mut client = ReviewsClient::new(grpc.channel("reviews.test:9080").unwrap());
    for _ in 0..20 {
        let reply = client.get_reviews(req(1)).await.unwrap().into_inner();
        assert_eq!(reply.served_by, "v1");
    }
    let mut stream = client.watch_reviews(req(1)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.reviewer, "v2");
    assert_eq!(v2.behaviour.hits(), 1, "WatchReviews went to v2");

    let mut faulty = tonic::Request::new(req(1));
    faulty
        .metadata_mut()
        .insert("x-fault", "yes".parse().unwrap());
    let status = client.get_reviews(faulty).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fault injection"),
        "{}",
        status.message()
    );
    assert_eq!(
        v1.behaviour.hits(),
        20,
        "the aborted call reached no server"
    );
}
