//! Backends as real processes, faulted by signal: hung (SIGSTOP) then resumed (SIGCONT),
//! killed (SIGKILL) in the middle of a response, or misbehaving at the TCP level.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use mesh::core::{ServiceConfig, classify::FailureKind, policy::Protocol};

use super::{
    Load,
    child::{Child, Mode},
    client, common, name, tally,
};

const URI: &str = "http://reviews.test:9080/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_among_three_is_ejected_and_rejoins_after_sigcont() {
    let kids: Vec<Child> = (0..3)
        .map(|i| Child::spawn(&format!("c{i}"), Mode::Serve))
        .collect();
    let addrs: Vec<_> = kids.iter().map(|k| k.addr).collect();
    let mut config = ServiceConfig::default();
    config.route.retries.per_try_timeout = Some(Duration::from_millis(200));
    config.destination.balance.outlier_detection = Some(super::quick_ejection());
    let client = client(&addrs, config);
    let started = Instant::now();
    let load = Load::start(&client, URI, 8, 100_000, Duration::from_secs(60));
    load.until(300).await;

    let hung = &kids[0];
    hung.stop();
    let ejected_after = super::ejection_of(&client, hung.addr).await;
    let ejected_after = ejected_after.expect("the hung backend was never ejected");
    // Stay hung for 3 s: probes time out and it is ejected again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = load.done();
    let resumed = started.elapsed();
    hung.cont();
    let back = load.answered_by_since("c0", resumed).await;
    let rejoined_after = started.elapsed() - resumed;
    load.until(load.done() + 500).await;
    let seen = load.finish().await;
    println!(
        "hung backend (SIGSTOP) among 3: ejected after {:.0} ms; {} requests while hung; \
         answering again {:.0} ms after SIGCONT; {}/{} succeeded ({:.3} %), failures {:?}",
        ejected_after.as_secs_f64() * 1e3,
        during,
        rejoined_after.as_secs_f64() * 1e3,
        seen.ok,
        seen.total(),
        seen.success() * 100.0,
        tally(&seen.failures),
    );
    assert!(back, "c0 never answered again after SIGCONT");
    assert!(
        ejected_after < Duration::from_secs(2),
        "ejected after {ejected_after:?}"
    );
    assert!(
        seen.success() >= 0.995,
        "success {:.4}: {:?}",
        seen.success(),
        tally(&seen.failures)
    );
}

/// Kills a backend while a response from it streams, and while one is awaited.
async fn killed_mid_response(protocol: Protocol) {
    let mut config = ServiceConfig::default();
    config.destination.protocol = protocol;
    config.destination.balance.outlier_detection = None;

    // Streaming: the head and a first chunk arrive, then the process dies.
    let mut kid = Child::spawn("s", Mode::Serve);
    let client = client(&[kid.addr], config.clone());
    let rsp = client
        .request(common::get("http://reviews.test:9080/stream"))
        .await
        .expect("the head arrives");
    assert_eq!(common::backend_of(&rsp), "s");
    let mut body = rsp.into_body();
    let first = body
        .frame()
        .await
        .expect("a first frame")
        .expect("the first chunk");
    assert_eq!(first.into_data().unwrap(), "first");
    kid.kill();
    let cut = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            }
        }
    })
    .await
    .expect("the body ends once the process is dead");
    let cut = cut.expect("a body cut short ends in an error, not a clean end");
    let retries = client.stats(&name()).unwrap().retries;
    println!(
        "{protocol:?} stream cut by SIGKILL: body error {cut:?}; retries {}",
        retries.retries
    );
    assert_eq!(
        retries.retries, 0,
        "a response that started streaming was retried"
    );

    // Unary: the request reached the process (it said so), which dies before answering.
    let mut kid = Child::spawn("u", Mode::Serve);
    let client = super::client(&[kid.addr], config);
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .request(common::get("http://reviews.test:9080/hang"))
                .await
                .map(|r| r.status())
        }
    });
    assert!(
        common::eventually(Duration::from_secs(10), async || kid
            .paths()
            .contains(&"/hang".to_owned()))
        .await,
        "the request never reached the child"
    );
    kid.kill();
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends once the process is dead")
        .unwrap()
        .expect_err("no answer from a killed process");
    let kind = super::kind_of(&err);
    let stats = client.stats(&name()).unwrap().retries;
    println!(
        "{protocol:?} unary call to a killed process: {err} ({kind:?}); retries {}",
        stats.retries
    );
    // A GET cut before its head is retried (Envoy's `reset`), on the only endpoint, now dead:
    // the final error is the retry's connect failure or the reset itself.
    assert!(
        matches!(kind, FailureKind::Reset | FailureKind::Connect),
        "{err}: {kind:?}"
    );
}

#[tokio::test]
async fn a_backend_killed_mid_response_over_http1_gives_typed_errors_and_no_late_retry() {
    killed_mid_response(Protocol::Http1).await;
}

#[tokio::test]
async fn a_backend_killed_mid_response_over_http2_gives_typed_errors_and_no_late_retry() {
    killed_mid_response(Protocol::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_accept_then_close_are_retried_within_budget() {
    let close = Child::spawn("close", Mode::AcceptClose);
    let reset = Child::spawn("reset", Mode::Reset);
    let good = common::backend("good").await;
    let mut config = ServiceConfig::default();
    // No ejection: every failure is there to be retried.
    config.destination.balance.outlier_detection = None;
    config.destination.balance.policy = mesh::core::LbPolicy::RoundRobin;
    let client = client(&[close.addr, reset.addr, good.addr], config);
    let started = Instant::now();
    let (mut ok, mut failures) = (0usize, Vec::new());
    // Sequential and paced: the budget refills at 10 retries a second plus 20 % of requests.
    for _ in 0..150 {
        match client.request(common::get(URI)).await {
            Ok(rsp) if rsp.status().is_success() => ok += 1,
            Ok(rsp) => failures.push(format!("status {}", rsp.status())),
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let r = client.stats(&name()).unwrap().retries;
    println!(
        "accept-then-close + reset + good, round robin: {ok}/150 succeeded in {elapsed:.1} s; \
         retries {}, budget exhausted {}; failures {:?}",
        r.retries,
        r.budget_exhausted,
        tally(&failures)
    );
    assert!(r.retries > 50, "the bad endpoints were not retried: {r:?}");
    // Within budget: at most 20 % of the requests plus 10 per second (and 2 per request).
    let allowed = (0.2 * r.requests as f64 + 10.0 * (elapsed + 10.0)) as u64;
    assert!(
        r.retries <= allowed.min(2 * r.requests),
        "{r:?}, allowed {allowed}"
    );
    assert!(ok >= 147, "{ok}/150: {:?}", tally(&failures));

    // Only bad endpoints: every request fails, typed, after a bounded number of attempts.
    let client = super::client(&[close.addr, reset.addr], ServiceConfig::default());
    for _ in 0..20 {
        let err = client
            .request(common::get(URI))
            .await
            .expect_err("nobody answers");
        let kind = super::kind_of(&err);
        assert!(
            matches!(
                kind,
                FailureKind::Reset | FailureKind::Connect | FailureKind::NoEndpoints
            ),
            "{err}: {kind:?}"
        );
    }
    let r = client.stats(&name()).unwrap().retries;
    assert!(r.attempts() <= 3 * 20, "{r:?}");
}
