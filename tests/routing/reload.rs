//! Live reloads of the documents under continuous load.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::{
    Fixture, URI,
    common::{backend_of, eventually, get},
    spread, weighted,
};

#[tokio::test]
async fn reloads_from_100_0_to_50_50_to_0_100_fail_no_request() {
    let f = Fixture::new().await;
    f.write_vs(&weighted(&[("v1", 100), ("v2", 0)]));
    let client = f.client();
    let mesh = f.mesh();
    drop(mesh);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut failures = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
                let futs: Vec<_> = (0..8).map(|_| client.request(get(URI))).collect();
                for r in futures_util::future::join_all(futs).await {
                    match r {
                        Ok(rsp) => *seen.entry(backend_of(&rsp)).or_default() += 1,
                        Err(e) => failures.push(e.to_string()),
                    }
                }
            }
            (seen, failures)
        })
    };
    let only = |want: &'static str| {
        let client = client.clone();
        async move {
            let c = spread(&client, URI, 50, 10).await;
            c.len() == 1 && c.contains_key(want)
        }
    };
    assert!(eventually(Duration::from_secs(10), async || only("v1").await).await);
    f.write_vs(&weighted(&[("v1", 50), ("v2", 50)]));
    assert!(
        eventually(Duration::from_secs(10), async || {
            let c = spread(&client, URI, 200, 20).await;
            c.get("v1").is_some_and(|n| *n > 60) && c.get("v2").is_some_and(|n| *n > 60)
        })
        .await,
        "50/50 never took effect"
    );
    f.write_vs(&weighted(&[("v1", 0), ("v2", 100)]));
    assert!(eventually(Duration::from_secs(10), async || only("v2").await).await);
    stop.store(true, Ordering::Relaxed);
    let (seen, failures) = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(seen.values().sum::<usize>() > 200, "{seen:?}");
    assert_eq!(seen.get("v3"), None);
}

#[tokio::test]
async fn an_invalid_change_is_rejected_and_the_routes_in_force_stay() {
    let f = Fixture::new().await;
    f.write_vs(&weighted(&[("v2", 1)]));
    let mesh = f.mesh();
    let client = mesh::hyper::MeshClient::<http_body_util::Empty<bytes::Bytes>>::new(mesh.clone());
    let store = mesh.config().unwrap().clone();
    let version = store.version();
    assert_eq!(backend_of(&client.request(get(URI)).await.unwrap()), "v2");
    // A weight of zero everywhere, then a typo: both rejected.
    for bad in [
        weighted(&[("v1", 0), ("v3", 0)]),
        weighted(&[("v3", 1)]).replace("weight", "wieght"),
    ] {
        let before = store.stats().rejections;
        f.write_vs(&bad);
        assert!(
            eventually(Duration::from_secs(10), async || store.stats().rejections
                > before)
            .await,
            "the change was never rejected"
        );
        let stats = store.stats();
        let err = stats.last_error.unwrap();
        assert!(err.contains("virtual-service.yaml"), "{err}");
        assert!(err.contains("VirtualService default/reviews"), "{err}");
        assert_eq!(store.version(), version, "the rejected set went live");
        for _ in 0..20 {
            assert_eq!(backend_of(&client.request(get(URI)).await.unwrap()), "v2");
        }
    }
    // A good change then applies.
    f.write_vs(&weighted(&[("v3", 1)]));
    assert!(
        eventually(Duration::from_secs(10), async || {
            backend_of(&client.request(get(URI)).await.unwrap()) == "v3"
        })
        .await
    );
    assert!(store.stats().last_error.is_none());
}

#[tokio::test]
async fn a_target_whose_client_was_dropped_still_follows_route_changes() {
    // Found by the Bookinfo demo: `GrpcClient::new(mesh).channel(..)` kept only the channel,
    // whose destination refers to its client weakly, and its routes froze.
    let f = Fixture::new().await;
    f.write_vs(&weighted(&[("v1", 1)]));
    let target = mesh::hyper::MeshClient::<http_body_util::Empty<bytes::Bytes>>::new(f.mesh())
        .target("reviews.default:9080")
        .unwrap();
    let req = || get("/");
    assert_eq!(backend_of(&target.request(req()).await.unwrap()), "v1");
    f.write_vs(&weighted(&[("v3", 1)]));
    assert!(
        eventually(Duration::from_secs(10), async || {
            backend_of(&target.request(req()).await.unwrap()) == "v3"
        })
        .await,
        "the target kept the routes of its first configuration"
    );
}
