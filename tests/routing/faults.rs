//! Faults and mirrors from VirtualService documents.

use std::time::{Duration, Instant};

use mesh::{core::route::Abort, hyper::Error};

use super::{
    Fixture, URI,
    common::{BackendOpts, backend_of, backend_with, get},
    vs,
};

#[tokio::test]
async fn delays_and_aborts_hit_their_share_of_requests() {
    let f = Fixture::new().await;
    f.write_vs(&vs(r#"  - fault:
      delay: {fixedDelay: 400ms, percentage: {value: 50}}
      abort: {httpStatus: 503, percentage: {value: 25}}
    route:
    - destination: {host: reviews, subset: v1}
"#));
    let client = f.client();
    let n = 400;
    let (mut delayed, mut aborted, mut ok) = (0, 0, 0);
    let futs: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let r = client.request(get(URI)).await;
                (r, start.elapsed())
            })
        })
        .collect();
    for f in futs {
        let (r, took) = f.await.unwrap();
        match r {
            Ok(rsp) => {
                assert_eq!(backend_of(&rsp), "v1");
                ok += 1;
                // A delay long enough that no undelayed request of a loaded machine takes it.
                if took >= Duration::from_millis(390) {
                    delayed += 1;
                }
            }
            Err(Error::FaultAborted { abort, .. }) => {
                assert_eq!(abort, Abort::Http(503));
                aborted += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    // Aborts are decided first: 25 % of all requests; delays hit half of the rest.
    let abort_pct = aborted as f64 * 100.0 / n as f64;
    let delay_pct = delayed as f64 * 100.0 / ok as f64;
    assert!(
        (17.0..=33.0).contains(&abort_pct),
        "{aborted} of {n} aborted"
    );
    assert!(
        (40.0..=60.0).contains(&delay_pct),
        "{delayed} of {ok} delayed"
    );
    // Injected aborts are not retried and never reach the backend.
    assert_eq!(f.v1.hits(), ok);
}

#[tokio::test]
async fn a_dead_or_slow_mirror_never_touches_the_main_path() {
    let f = Fixture::new().await;
    let slow = backend_with(BackendOpts {
        delay: Duration::from_secs(2),
        ..BackendOpts::named("shadow")
    })
    .await;
    // The mirror host: one slow endpoint; and another that refuses connections.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let eps = std::fs::read_to_string(f.dir.path().join("endpoints.yaml")).unwrap()
        + &format!(
            "  shadow.default:9080:\n    - address: {}\n  gone.default:9080:\n    - address: {dead_addr}\n",
            slow.addr
        );
    std::fs::write(f.dir.path().join("endpoints.yaml"), eps).unwrap();
    f.write_vs(&vs(r#"  - route:
    - destination: {host: reviews, subset: v1}
    mirrors:
    - destination: {host: shadow}
    - destination: {host: gone}
"#));
    let client = f.client();
    let start = Instant::now();
    for _ in 0..50 {
        let rsp = client.request(get(URI)).await.unwrap();
        assert_eq!(backend_of(&rsp), "v1");
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the main path waited for its mirrors: {:?}",
        start.elapsed()
    );
    assert_eq!(f.v1.hits(), 50);
    // The slow mirror got its copies (they are still being answered).
    assert!(
        super::common::eventually(Duration::from_secs(5), async || slow.hits() >= 50).await,
        "mirror got {} copies",
        slow.hits()
    );
    let name = "reviews.default.svc.cluster.local:9080".parse().unwrap();
    let counts = client.mirrors(&name).unwrap();
    assert_eq!(counts.sent + counts.skipped, 100, "{counts:?}");
}

#[tokio::test]
async fn a_mirrored_request_body_reaches_the_mirror() {
    let f = Fixture::new().await;
    let shadow = backend_with(BackendOpts::named("shadow")).await;
    let eps = std::fs::read_to_string(f.dir.path().join("endpoints.yaml")).unwrap()
        + &format!("  shadow.default:9080:\n    - address: {}\n", shadow.addr);
    std::fs::write(f.dir.path().join("endpoints.yaml"), eps).unwrap();
    f.write_vs(&vs(r#"  - route:
    - destination: {host: reviews, subset: v2}
    mirror: {host: shadow}
    mirrorPercentage: {value: 100}
"#));
    let client = mesh::hyper::MeshClient::<http_body_util::Full<bytes::Bytes>>::new(f.mesh());
    let req = http::Request::post(URI)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            "hello mirror",
        )))
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.headers()["x-body-len"], "12");
    assert!(super::common::eventually(Duration::from_secs(5), async || shadow.hits() == 1).await);
}
