//! The scripted scenario: each phase's routing written as Istio documents and applied live,
//! traffic driven into productpage meanwhile, every figure measured and the phase's promise
//! checked.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use mesh::{core::ServiceName, hyper::MeshClient};
use serde::Serialize;

use super::{
    cluster::Cluster,
    services::{X_REVIEWS, proto},
};

const NETWORKING: &str = include_str!("networking/destination-rule-all.yaml");
const PEER_AUTHN: &str = include_str!("security/peer-authentication-strict.yaml");
const AUTHZ: &str = include_str!("security/authorization-policies.yaml");
const AB: &str = include_str!("networking/virtual-service-reviews-test-v2.yaml");

/// The documents every phase starts from.
pub fn base_documents() -> Vec<(&'static str, String)> {
    vec![
        ("destination-rule-all.yaml", NETWORKING.to_owned()),
        ("peer-authentication-strict.yaml", PEER_AUTHN.to_owned()),
        ("authorization-policies.yaml", AUTHZ.to_owned()),
    ]
}

fn reviews_vs(weights: &[(&str, u32)], extra: &str) -> String {
    let mut s = String::from(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n  - reviews\n  http:\n  - ",
    );
    s.push_str(extra);
    s.push_str("route:\n");
    for (subset, w) in weights {
        s.push_str(&format!("    - destination:\n        host: reviews\n        subset: {subset}\n      weight: {w}\n"));
    }
    s
}

/// The phases, in order.
pub fn phases() -> Vec<Phase> {
    let fault_ratings = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts:\n  - ratings\n  http:\n  - fault:\n      delay:\n        percentage:\n          value: 50\n        fixedDelay: 2s\n    route:\n    - destination:\n        host: ratings\n        subset: v1\n";
    vec![
        Phase {
            name: "baseline",
            what: "reviews split evenly over v1, v2, v3",
            docs: vec![(
                "virtual-service-reviews.yaml",
                Some(reviews_vs(&[("v1", 34), ("v2", 33), ("v3", 33)], "")),
            )],
            action: None,
        },
        Phase {
            name: "canary",
            what: "90 % v1, 10 % v3",
            docs: vec![(
                "virtual-service-reviews.yaml",
                Some(reviews_vs(&[("v1", 90), ("v3", 10)], "")),
            )],
            action: None,
        },
        Phase {
            name: "ab",
            what: "end-user jason → v2, everyone else → v1 (Istio's virtual-service-reviews-test-v2.yaml)",
            docs: vec![("virtual-service-reviews.yaml", Some(AB.to_owned()))],
            action: None,
        },
        Phase {
            name: "fault",
            what: "ratings delayed 2 s for 50 % of calls; reviews (all v2) with a 2 s timeout, 800 ms per try, 2 retries",
            docs: vec![
                (
                    "virtual-service-ratings.yaml",
                    Some(fault_ratings.to_owned()),
                ),
                (
                    "virtual-service-reviews.yaml",
                    Some(reviews_vs(
                        &[("v2", 100)],
                        "timeout: 2s\n    retries:\n      attempts: 2\n      perTryTimeout: 800ms\n      retryOn: unavailable,deadline-exceeded,connect-failure,refused-stream\n    ",
                    )),
                ),
            ],
            action: None,
        },
        Phase {
            name: "outage",
            what: "reviews all v1 (two instances); reviews-v1-b killed",
            docs: vec![
                ("virtual-service-ratings.yaml", None),
                (
                    "virtual-service-reviews.yaml",
                    Some(reviews_vs(
                        &[("v1", 100)],
                        "retries:\n      attempts: 2\n      retryOn: unavailable,connect-failure,refused-stream\n    ",
                    )),
                ),
            ],
            action: Some(Action::Kill("reviews-v1-b")),
        },
        Phase {
            name: "deny",
            what: "a workload that is not reviews calls ratings directly",
            docs: vec![],
            action: Some(Action::Rogue),
        },
    ]
}

pub struct Phase {
    pub name: &'static str,
    pub what: &'static str,
    /// Files written (or removed: `None`) in the config directory when the phase starts.
    pub docs: Vec<(&'static str, Option<String>)>,
    pub action: Option<Action>,
}

pub enum Action {
    /// Kill this instance a moment into the phase.
    Kill(&'static str),
    /// A rogue workload (identity bookinfo-productpage) calls ratings directly.
    Rogue,
}

/// What one phase measured.
#[derive(Default, Debug, Serialize)]
pub struct Stats {
    pub phase: String,
    pub requests: u64,
    /// Pages served (HTTP 200) with the reviews section filled.
    pub ok: u64,
    pub success_pct: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub by_version: BTreeMap<String, u64>,
    pub jason_by_version: BTreeMap<String, u64>,
    pub retries: u64,
    pub ejections: u64,
    pub denials: u64,
    pub rogue_successes: u64,
    pub checks: Vec<(String, bool)>,
    /// The first failure seen, as the gateway's client reported it.
    pub first_error: Option<String>,
    #[serde(skip)]
    latencies_us: Vec<u64>,
}

/// Drives `secs` of traffic into productpage from the gateway's client, 8 requests at a time,
/// one in five as the user jason.
async fn drive(
    client: &MeshClient<Empty<Bytes>>,
    secs: f64,
    stats: &Arc<Mutex<Stats>>,
    live: bool,
) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (client, stats) = (client.clone(), stats.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let jason = (n + w) % 5 == 0;
                    let mut req = http::Request::get("http://productpage:9080/productpage")
                        .body(Empty::new())
                        .unwrap();
                    if jason {
                        req.headers_mut()
                            .insert("end-user", http::HeaderValue::from_static("jason"));
                    }
                    let t = Instant::now();
                    let r = client.request(req).await;
                    let us = t.elapsed().as_micros() as u64;
                    let version = match &r {
                        Ok(rsp) if rsp.status().is_success() => rsp
                            .headers()
                            .get(X_REVIEWS)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_owned(),
                        Ok(rsp) => format!("http {}", rsp.status().as_u16()),
                        Err(_) => "error".to_owned(),
                    };
                    let mut s = stats.lock().unwrap();
                    if let (Err(e), None) = (&r, &s.first_error) {
                        s.first_error = Some(e.to_string());
                    }
                    s.requests += 1;
                    s.latencies_us.push(us);
                    if version.starts_with('v') {
                        s.ok += 1;
                    }
                    if jason {
                        *s.jason_by_version.entry(version.clone()).or_default() += 1;
                    }
                    *s.by_version.entry(version).or_default() += 1;
                }
            })
        })
        .collect();
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if live {
                let s = stats.lock().unwrap();
                eprint!(
                    "\r  {:>8} requests  {:>6.2} % ok  {:?}        ",
                    s.requests,
                    pct(s.ok, s.requests),
                    s.by_version
                );
            }
        }
    };
    tokio::select! {
        _ = futures_util::future::join_all(workers) => {}
        _ = ticker => {}
    }
    if live {
        eprintln!();
    }
}

/// [`drive`] for `--serve`: quiet, one second at a time.
pub async fn drive_for(client: &MeshClient<Empty<Bytes>>, secs: f64, stats: &Arc<Mutex<Stats>>) {
    drive(client, secs, stats, false).await
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

/// Retries and ejections so far of productpage's calls to reviews.
fn reviews_counters(cluster: &Cluster) -> (u64, u64) {
    let Some(grpc) = cluster.probes.productpage_grpc.get() else {
        return (0, 0);
    };
    let name: ServiceName = "reviews:9080".parse().unwrap();
    grpc.stats(&name).map_or((0, 0), |s| {
        (
            s.retries.retries,
            s.endpoints.iter().map(|e| e.ejections).sum(),
        )
    })
}

/// Runs one phase: its documents, a settle moment, then `secs` of traffic.
pub async fn run_phase(
    cluster: &mut Cluster,
    gateway: &MeshClient<Empty<Bytes>>,
    phase: &Phase,
    secs: f64,
    live: bool,
) -> Result<Stats, Box<dyn std::error::Error>> {
    for (file, text) in &phase.docs {
        match text {
            Some(t) => cluster.write(file, t).await?,
            None => cluster.remove(file).await?,
        }
    }
    tokio::time::sleep(cluster.registry.settle()).await;
    let stats = Arc::new(Mutex::new(Stats {
        phase: phase.name.to_owned(),
        ..Stats::default()
    }));
    let (retries0, ejections0) = reviews_counters(cluster);
    let denied0 = cluster.probes.ratings_authz.get().map_or(0, |a| a.denied());
    let mut rogue_ok = 0;
    match &phase.action {
        Some(Action::Kill(name)) => {
            let driving = drive(gateway, secs, &stats, live);
            let kill = async {
                tokio::time::sleep(Duration::from_secs_f64(secs / 4.0)).await;
                if let Some(i) = cluster.instance(name) {
                    // Killing joins the instance's thread: off the runtime's workers.
                    tokio::task::block_in_place(|| i.kill());
                }
            };
            tokio::join!(driving, kill);
        }
        Some(Action::Rogue) => {
            let rogue = cluster
                .workload("productpage", Some("v1"), "productpage")
                .await?
                .grpc();
            let ch = rogue.channel("ratings:9080")?;
            let driving = drive(gateway, secs, &stats, live);
            let calls = async {
                let mut ok = 0;
                for _ in 0..50 {
                    let r = proto::ratings_client::RatingsClient::new(ch.clone())
                        .get_ratings(proto::RatingsRequest { product_id: 0 })
                        .await;
                    if r.is_ok() {
                        ok += 1;
                    }
                }
                ok
            };
            let (_, ok) = tokio::join!(driving, calls);
            rogue_ok = ok;
        }
        None => drive(gateway, secs, &stats, live).await,
    }
    let (retries1, ejections1) = reviews_counters(cluster);
    let denied1 = cluster.probes.ratings_authz.get().map_or(0, |a| a.denied());
    let mut s = Arc::try_unwrap(stats)
        .map_err(|_| "driver still running")?
        .into_inner()?;
    // Counters are per endpoint while it is listed: one that left the registry (a killed
    // instance whose lease ran out) takes its counts with it.
    s.retries = retries1.saturating_sub(retries0);
    s.ejections = ejections1.saturating_sub(ejections0);
    s.denials = denied1.saturating_sub(denied0);
    s.rogue_successes = rogue_ok;
    s.success_pct = pct(s.ok, s.requests);
    s.latencies_us.sort_unstable();
    let q = |p: f64| {
        s.latencies_us
            .get(
                ((s.latencies_us.len() as f64 * p) as usize)
                    .min(s.latencies_us.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0) as f64
            / 1e3
    };
    s.p50_ms = q(0.50);
    s.p99_ms = q(0.99);
    check(&mut s);
    Ok(s)
}

/// The promise of each phase.
fn check(s: &mut Stats) {
    let share = |s: &Stats, v: &str| pct(*s.by_version.get(v).unwrap_or(&0), s.requests);
    let mut checks = Vec::new();
    match s.phase.as_str() {
        "baseline" => {
            for v in ["v1", "v2", "v3"] {
                checks.push((
                    format!("{v} gets 33 % ± 5 ({:.1} %)", share(s, v)),
                    (share(s, v) - 33.3).abs() <= 5.0,
                ));
            }
            checks.push((
                format!("success ≥ 99.9 % ({:.2} %)", s.success_pct),
                s.success_pct >= 99.9,
            ));
        }
        "canary" => {
            let v3 = share(s, "v3");
            checks.push((
                format!("v3 gets 10 % ± 3 ({v3:.1} %)"),
                (v3 - 10.0).abs() <= 3.0,
            ));
            checks.push((
                format!("the rest goes to v1 ({:.1} %)", share(s, "v1")),
                (share(s, "v1") + v3 - 100.0).abs() < 0.5,
            ));
        }
        "ab" => {
            let jason: u64 = s.jason_by_version.values().sum();
            let jason_v2 = *s.jason_by_version.get("v2").unwrap_or(&0);
            checks.push((
                format!("every jason request → v2 ({jason_v2}/{jason})"),
                jason > 0 && jason_v2 == jason,
            ));
            let others_v1 = *s.by_version.get("v1").unwrap_or(&0);
            checks.push((
                format!("everyone else → v1 ({others_v1}/{})", s.requests - jason),
                others_v1 == s.requests - jason,
            ));
        }
        "fault" => {
            checks.push((format!("retries happen ({})", s.retries), s.retries > 0));
            checks.push((
                format!("p99 bounded by the 2 s timeout ({:.0} ms)", s.p99_ms),
                s.p99_ms <= 2300.0,
            ));
        }
        "outage" => {
            checks.push((
                format!("success ≥ 99.9 % ({:.3} %)", s.success_pct),
                s.success_pct >= 99.9,
            ));
        }
        "deny" => {
            checks.push((
                format!("the rogue caller is denied ({} denials)", s.denials),
                s.denials > 0,
            ));
            checks.push((
                format!("and never served ({} successes)", s.rogue_successes),
                s.rogue_successes == 0,
            ));
        }
        _ => {}
    }
    s.checks = checks;
}

/// The final table.
pub fn table(all: &[Stats]) -> String {
    let mut t = format!(
        "{:<9} {:>8} {:>9} {:>8} {:>8}  {:<34} {:>7} {:>5} {:>6}\n",
        "phase",
        "requests",
        "success",
        "p50 ms",
        "p99 ms",
        "reviews by version",
        "retries",
        "eject",
        "denied"
    );
    for s in all {
        let split: Vec<String> = s
            .by_version
            .iter()
            .map(|(v, n)| format!("{v} {:.0}%", pct(*n, s.requests)))
            .collect();
        t.push_str(&format!(
            "{:<9} {:>8} {:>8.2}% {:>8.1} {:>8.1}  {:<34} {:>7} {:>5} {:>6}\n",
            s.phase,
            s.requests,
            s.success_pct,
            s.p50_ms,
            s.p99_ms,
            split.join(" "),
            s.retries,
            s.ejections,
            s.denials
        ));
    }
    t
}
