//! mesh in one screen: three backends, a meshed hyper client that calls the logical name
//! `reviews.default:9080`, the spread of requests over the endpoints, an endpoint removed
//! live by editing the endpoints file, and what the admin endpoint's `/metrics` says about it.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use mesh::{
    core::{
        Mesh,
        telemetry::{Registry, Telemetry},
    },
    hyper::{
        ClientSettings, MeshClient,
        admin::AdminService,
        server::{Acceptor, serve},
    },
};
use tokio::net::TcpListener;

/// A backend that answers with its name.
async fn backend(name: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |_: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn endpoints_file(endpoints: &[(std::net::SocketAddr, &str)]) -> String {
    let mut yaml = String::from("services:\n  reviews.default:9080:\n");
    for (addr, version) in endpoints {
        yaml.push_str(&format!(
            "    - address: {addr}\n      labels: {{ version: {version} }}\n"
        ));
    }
    yaml
}

/// Sends `n` requests, 10 at a time, and counts who answered.
async fn spread(client: &MeshClient<Empty<Bytes>>, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n / 10 {
        let batch: Vec<_> = (0..10)
            .map(|_| {
                let req = Request::get("http://reviews.default:9080/reviews/1")
                    .body(Empty::new())
                    .expect("valid request");
                tokio::spawn(client.request(req))
            })
            .collect();
        for task in batch {
            let who = match task.await.expect("request task") {
                Ok(rsp) => {
                    let body = rsp.into_body().collect().await.expect("body").to_bytes();
                    String::from_utf8_lossy(&body).into_owned()
                }
                Err(e) => format!("error: {e}"),
            };
            *counts.entry(who).or_default() += 1;
        }
    }
    counts
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let (v1, v2, v3) = (
        backend("reviews-v1").await,
        backend("reviews-v2").await,
        backend("reviews-v3").await,
    );
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, endpoints_file(&[(v1, "v1"), (v2, "v2"), (v3, "v3")]))?;

    // Metrics go to the application's own registry, served by the admin endpoint.
    let mut registry = Registry::default();
    let telemetry = Telemetry::new(&mut registry);
    let admin = TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin.local_addr()?;
    let admin_task = tokio::spawn(serve(
        admin,
        Acceptor::plaintext(),
        AdminService::new(std::sync::Arc::new(registry), telemetry.clone()),
    ));

    // The one line that makes a hyper client a mesh client.
    let client = MeshClient::with_settings(
        Mesh::builder()
            .endpoints_file(&file, Default::default())
            .build()?,
        ClientSettings {
            telemetry: Some(telemetry),
            ..Default::default()
        },
    );

    println!(
        "\n300 requests to http://reviews.default:9080, 10 at a time (P2C Peak-EWMA over 3 endpoints):"
    );
    for (who, n) in spread(&client, 300).await {
        println!("  {who:<12} {n:>4}");
    }

    std::fs::write(&file, endpoints_file(&[(v1, "v1"), (v2, "v2")]))?;
    println!("\nendpoints file edited: reviews-v3 removed; waiting for the watcher...");
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("300 more requests:");
    for (who, n) in spread(&client, 300).await {
        println!("  {who:<12} {n:>4}");
    }

    // The same story from http://{admin}/metrics (and /mesh/debug for the JSON snapshot),
    // fetched with a client of its own so that the scrape does not show in what it reads.
    let metrics = MeshClient::<Empty<Bytes>>::new(Mesh::builder().build()?)
        .request(
            Request::get(format!("http://{admin_addr}/metrics"))
                .body(Empty::new())
                .expect("valid request"),
        )
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    println!(
        "
from http://{admin_addr}/metrics:"
    );
    for line in String::from_utf8_lossy(&metrics).lines().filter(|l| {
        l.starts_with("mesh_client_requests_total")
            || l.starts_with("mesh_endpoint_responses_total")
            || l.starts_with("mesh_config_reloads_total")
    }) {
        println!("  {line}");
    }
    // Stop watching the endpoints file (the admin task's telemetry and the client hold the
    // mesh) before its directory is removed.
    admin_task.abort();
    let _ = admin_task.await;
    drop(client);
    drop(dir);
    Ok(())
}
