//! The file discovery source under a running client: live adds and removes, invalid updates
//! rejected with the last good endpoints kept, invalid files rejected at start.

mod common;

use std::{collections::HashSet, path::Path, time::Duration};

use common::{Backend, backend, backend_of, eventually, get, round_robin};
use mesh::{
    core::{
        Mesh, ServiceConfig,
        discover::{DiscoveryError, EndpointSource, FileSource},
        mesh::BuildError,
    },
    hyper::MeshClient,
};

fn endpoints_yaml(backends: &[&Backend]) -> String {
    let mut s = String::from("services:\n  reviews.test:9080:\n");
    for b in backends {
        s.push_str(&format!(
            "    - address: {}\n      labels: {{ name: {} }}\n",
            b.addr, b.name
        ));
    }
    s
}

/// Replaces the file the way deploy tools do: write a temporary file, rename it over.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn answered_by(
    client: &MeshClient<http_body_util::Empty<bytes::Bytes>>,
    n: usize,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let rsp = client
            .request(get("http://reviews.test:9080/"))
            .await
            .unwrap();
        seen.insert(backend_of(&rsp));
    }
    seen
}

/// Round robin, so that "every endpoint in the set answers within n requests" is certain
/// (P2C at concurrency 1 rightly prefers the lower-latency endpoint).
fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn endpoints_are_added_and_removed_live_through_the_file() {
    common::trace();
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, endpoints_yaml(&[&a, &b])).unwrap();
    let mesh = Mesh::builder()
        .endpoints_file(&path, round_robin())
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::new(mesh);
    assert_eq!(answered_by(&client, 100).await, set(&["a", "b"]));

    // Add c.
    replace(&path, &endpoints_yaml(&[&a, &b, &c]));
    assert!(
        eventually(Duration::from_secs(10), async || answered_by(&client, 30)
            .await
            .contains("c"))
        .await,
        "c never received traffic after being added"
    );

    // Remove a (in place this time, as an editor would).
    std::fs::write(&path, endpoints_yaml(&[&b, &c])).unwrap();
    let name = "reviews.test:9080".parse().unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            client.endpoints(&name).unwrap().len() == 2
        })
        .await
    );
    let hits_a = a.hits();
    assert_eq!(answered_by(&client, 100).await, set(&["b", "c"]));
    assert_eq!(a.hits(), hits_a, "a received requests after removal");
}

#[tokio::test]
async fn invalid_update_is_reported_and_the_last_good_endpoints_stay() {
    let (a, b) = (backend("a").await, backend("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, endpoints_yaml(&[&a, &b])).unwrap();
    let source = FileSource::open(&path).unwrap();
    let mesh = Mesh::builder()
        .service_with("reviews.test:9080", source.clone(), round_robin())
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::new(mesh);
    assert_eq!(answered_by(&client, 50).await, set(&["a", "b"]));

    let bad = "services:\n  reviews.test:9080:\n    - address: 127.0.0.1:notaport\n";
    replace(&path, bad);
    assert!(
        eventually(Duration::from_secs(10), async || source
            .last_error()
            .is_some())
        .await
    );
    match source.last_error().unwrap() {
        DiscoveryError::File { path: p, reason } => {
            assert_eq!(p, path);
            assert!(
                reason.contains("services[\"reviews.test:9080\"][0].address"),
                "{reason}"
            );
            assert!(reason.contains("notaport"), "{reason}");
        }
        other => panic!("expected a file error, got {other:?}"),
    }
    // The subscription carries the error too, and the endpoints are unchanged.
    let snap = source
        .subscribe(&"reviews.test:9080".parse().unwrap())
        .snapshot();
    assert_eq!(snap.endpoints.unwrap().len(), 2);
    assert!(snap.last_error.is_some());
    assert_eq!(answered_by(&client, 50).await, set(&["a", "b"]));

    // Syntax errors and deletion are rejected the same way.
    replace(&path, "services: [oops\n");
    assert!(
        eventually(Duration::from_secs(10), async || {
            source
                .last_error()
                .is_some_and(|e| e.to_string().contains("invalid YAML"))
        })
        .await
    );
    std::fs::remove_file(&path).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            source
                .last_error()
                .is_some_and(|e| e.to_string().contains("cannot read"))
        })
        .await
    );
    assert_eq!(answered_by(&client, 50).await, set(&["a", "b"]));

    // A good file clears the error and applies.
    replace(&path, &endpoints_yaml(&[&b]));
    assert!(
        eventually(Duration::from_secs(10), async || source
            .last_error()
            .is_none())
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), async || answered_by(&client, 20)
            .await
            == set(&["b"]))
        .await
    );
}

#[tokio::test]
async fn invalid_file_at_start_is_an_error_naming_path_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.json");
    std::fs::write(
        &path,
        r#"{"services": {"reviews.test:9080": [{"address": "127.0.0.1:1", "weight": 0}]}}"#,
    )
    .unwrap();
    let err = Mesh::builder()
        .endpoints_file(&path, ServiceConfig::default())
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        BuildError::Discovery(DiscoveryError::File { .. })
    ));
    assert!(msg.contains("endpoints.json"), "{msg}");
    assert!(msg.contains("[0].weight"), "{msg}");
}

#[tokio::test]
async fn a_non_atomic_rewrite_of_the_file_fails_no_request() {
    // Editors and some deploy tools truncate the file, then write it: a reader can see it
    // empty. An empty file must not be read as "no services".
    let (a, b) = (backend("a").await, backend("b").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    let good = endpoints_yaml(&[&a, &b]);
    std::fs::write(&path, &good).unwrap();
    let source = FileSource::open(&path).unwrap();
    let mesh = Mesh::builder()
        .service_with("reviews.test:9080", source.clone(), round_robin())
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::new(mesh);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                match client.request(get("http://reviews.test:9080/")).await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (ok, failed)
        })
    };
    for round in 0..5 {
        // Truncate, pause past the watcher's debounce, write the same content again.
        std::fs::File::create(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&path, &good).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            eventually(Duration::from_secs(10), async || source
                .last_error()
                .is_none())
            .await,
            "round {round}: the rewritten file was not applied"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 100, "only {ok} requests were sent");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    assert!(
        source.rejections() >= 1,
        "the empty file was never seen: the test proved nothing"
    );
    let last = source.recent_errors();
    assert!(
        last.iter()
            .any(|(_, e)| e.to_string().contains("the file is empty")),
        "{last:?}"
    );
}
