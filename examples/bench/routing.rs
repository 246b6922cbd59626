//! `routing`: what Istio routing costs on the request path, and how fast a large document set
//! is validated and swapped in under load.
//!
//! Variants, all against the same two backends (labelled `version: v1` and `v2`):
//! - `raw`: hyper-util to one backend (reference);
//! - `mesh`: the mesh client's default stack over both endpoints, no documents;
//! - `mesh-routes`: the same service routed by a VirtualService of five rules (the first four
//!   — a header, a path prefix, a header regex, a method — do not match the bench's requests;
//!   the fifth does) splitting 90/10 over two DestinationRule subsets.
//!
//! After the rounds, a reload measurement: the documents directory holds 1,000 more
//! VirtualServices and 1,000 DestinationRules; under load at c32 through `mesh-routes`, the set
//! is rewritten (the bench host's split moves between 90/10 and 80/20) and reloaded — read,
//! validated whole and swapped — several times; each reload is timed from its start until the
//! new set is swapped in (an `on_swap` listener marks the moment; requests use the new set
//! from then on), the time `reload()` takes to return (it then releases the superseded set) is
//! printed beside it, and the requests of the run that failed are counted.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use mesh::core::{Endpoint, Mesh, ServiceConfig, discover::StaticSource};
use mesh::hyper::MeshClient;

use crate::{
    Variant, backend, load,
    report::{Check, Row, find},
    scenarios::{no_external, per_run},
    targets,
};

const HOST: &str = "bench.default:8080";
const URI: &str = "http://bench.default:8080/";
/// Extra documents of the reload measurement.
pub const RELOAD_HOSTS: usize = 1_000;
/// Reloads measured.
const RELOADS: usize = 7;

pub struct Routing {
    _v1: backend::Backend,
    _v2: backend::Backend,
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    endpoints: Vec<Endpoint>,
    pub variants: Vec<Variant>,
}

fn bench_docs(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: bench}}
spec:
  host: bench
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench}}
spec:
  hosts: [bench]
  http:
  - match: [{{headers: {{x-canary: {{exact: "1"}}}}}}]
    route: [{{destination: {{host: bench, subset: v2}}}}]
  - match: [{{uri: {{prefix: /admin}}}}]
    route: [{{destination: {{host: bench, subset: v2}}}}]
  - match: [{{headers: {{end-user: {{regex: "jason|john"}}}}}}]
    route: [{{destination: {{host: bench, subset: v2}}}}]
  - match: [{{method: {{exact: POST}}}}]
    route: [{{destination: {{host: bench, subset: v2}}}}]
  - match: [{{uri: {{prefix: /}}}}]
    route:
    - {{destination: {{host: bench, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: bench, subset: v2}}, weight: {v2}}}
"#
    )
}

/// 1,000 VirtualServices and 1,000 DestinationRules for other hosts (`w`: the weight of v1).
fn bulk_docs(w: u32) -> String {
    let mut s = String::new();
    for i in 0..RELOAD_HOSTS {
        s.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{i}}}\nspec:\n  host: svc-{i}\n  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}}}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]\n  - route:\n    - {{destination: {{host: svc-{i}, subset: v1}}, weight: {w}}}\n    - {{destination: {{host: svc-{i}, subset: v2}}, weight: {}}}\n    retries: {{attempts: 2, perTryTimeout: 1s}}\n    timeout: 5s\n---\n",
            100 - w
        ));
    }
    s
}

/// The process's minor page faults so far (`/proc/self/stat`; 0 where it cannot be read): a
/// reload that grows the heap pays one per new page.
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(7)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn client(
    endpoints: &[Endpoint],
    docs: Option<&Path>,
) -> MeshClient<http_body_util::Empty<bytes::Bytes>> {
    let mut b = Mesh::builder().service_with(
        HOST,
        StaticSource::new(endpoints.to_vec()).expect("distinct endpoints"),
        ServiceConfig::default(),
    );
    if let Some(d) = docs {
        b = b.istio_config(d);
    }
    MeshClient::new(b.without_dns_fallback().build().expect("valid bench mesh"))
}

impl Routing {
    pub async fn new() -> Self {
        let v1 = backend::start(Duration::ZERO).await;
        let v2 = backend::start(Duration::ZERO).await;
        let endpoints = vec![
            Endpoint::new(v1.addr).label("version", "v1"),
            Endpoint::new(v2.addr).label("version", "v2"),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let docs = dir.path().join("routes");
        std::fs::create_dir(&docs).expect("docs dir");
        std::fs::write(docs.join("bench.yaml"), bench_docs(90, 10)).expect("write docs");
        let raw_uri = format!("http://{}/", v1.addr);
        let (e1, e2, e3) = (endpoints.clone(), endpoints.clone(), endpoints.clone());
        let d = docs.clone();
        // Diagnostic (`--only mesh-rules-only`): the five rules, the last sending everything to
        // the whole service, so the balancer is the `mesh` row's and only routing differs.
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).expect("rules dir");
        std::fs::write(
            rules.join("bench.yaml"),
            bench_docs(90, 10).replace(
                "    - {destination: {host: bench, subset: v1}, weight: 90}\n    - {destination: {host: bench, subset: v2}, weight: 10}\n",
                "    - {destination: {host: bench}}\n",
            ),
        )
        .expect("write docs");
        let variants = vec![
            per_run(
                "raw",
                move || targets::Raw::new(&raw_uri),
                Arc::new(no_external),
            ),
            per_run(
                "mesh",
                move || targets::Mesh::new(client(&e1, None), URI),
                Arc::new(no_external),
            ),
            per_run(
                "mesh-routes",
                move || targets::Mesh::new(client(&e2, Some(&d)), URI),
                Arc::new(no_external),
            ),
            per_run(
                "mesh-rules-only",
                move || targets::Mesh::new(client(&e3, Some(&rules)), URI),
                Arc::new(no_external),
            ),
        ];
        Self {
            _v1: v1,
            _v2: v2,
            dir: docs,
            _dir: dir,
            endpoints,
            variants,
        }
    }

    /// The reload measurement (see the module docs): times in ms from the start of a reload
    /// until the new set is swapped in, when one file of the set changed and when every
    /// document did, the load sample, and the initial load's time.
    pub async fn reloads(&self, duration: Duration) -> (Vec<f64>, Vec<f64>, load::Sample, f64) {
        std::fs::write(self.dir.join("bulk.yaml"), bulk_docs(90)).expect("write docs");
        let t0 = Instant::now();
        let c = client(&self.endpoints, Some(&self.dir));
        let initial_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mesh_store = {
            // The client's mesh holds the store; a second mesh over the same directory would
            // have its own. Keep the one the client uses.
            let target = targets::Mesh::new(c.clone(), URI);
            let store = c.mesh().config().expect("documents").clone();
            (Arc::new(target), store)
        };
        let (target, store) = mesh_store;
        // The figure is the time until the new set is swapped in (requests see it from then
        // on); `reload()` returns after that, once the superseded set is released: both are
        // reported.
        let swapped: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
        let mark = swapped.clone();
        store.on_swap(move |_| {
            *mark.lock().unwrap() = Some(Instant::now());
            true
        });
        let returned = std::sync::Mutex::new(Vec::new());
        let load = load::run(target.clone(), 32, duration, &no_external);
        let reloads = async {
            let (mut one, mut all) = (Vec::new(), Vec::new());
            let pause = duration / (2 * RELOADS as u32 + 2);
            for i in 0..2 * RELOADS {
                tokio::time::sleep(pause).await;
                let whole = i % 2 == 1;
                if whole {
                    // Every document changes: the whole set is read and converted again.
                    let w = if i % 4 == 1 { 85 } else { 90 };
                    std::fs::write(self.dir.join("bulk.yaml"), bulk_docs(w)).expect("write docs");
                } else {
                    let (a, b) = if i % 4 == 0 { (80, 20) } else { (90, 10) };
                    std::fs::write(self.dir.join("bench.yaml"), bench_docs(a, b))
                        .expect("write docs");
                }
                let store = store.clone();
                let swapped = swapped.clone();
                let (took, back) = tokio::task::spawn_blocking(move || {
                    *swapped.lock().unwrap() = None;
                    let faults = minor_faults();
                    let t = Instant::now();
                    store.reload().expect("valid documents");
                    let back = t.elapsed().as_secs_f64() * 1e3;
                    let faults = minor_faults().saturating_sub(faults);
                    let at = swapped
                        .lock()
                        .unwrap()
                        .expect("the changed set was swapped in");
                    (at.duration_since(t).as_secs_f64() * 1e3, (back, faults))
                })
                .await
                .expect("reload task");
                returned.lock().unwrap().push((whole, back));
                if whole {
                    all.push(took)
                } else {
                    one.push(took)
                }
            }
            (one, all)
        };
        let (sample, (one, all)) = tokio::join!(load, reloads);
        let returned = returned.into_inner().unwrap();
        for (what, whole) in [
            ("one file changed", false),
            ("every document changed", true),
        ] {
            let ms: Vec<String> = returned
                .iter()
                .filter(|(w, _)| *w == whole)
                .map(|(_, (ms, faults))| format!("{ms:.1} ({faults} faults)"))
                .collect();
            println!(
                "reload() returned (ms, minor page faults of the process), {what}, after releasing the superseded set: [{}]",
                ms.join(", ")
            );
        }
        (one, all, sample, initial_ms)
    }

    pub fn checks(rows: &[Row], one: &[f64], all: &[f64], sample: &load::Sample) -> Vec<Check> {
        let mut out = Vec::new();
        if let (Some(m), Some(r)) = (find(rows, "mesh", 32), find(rows, "mesh-routes", 32)) {
            let ratio = r.rps / m.rps;
            out.push(Check::new(
                "mesh-routes >= 0.97x mesh rps at c32 (5 rules, the last matching, 90/10 split)",
                format!(
                    "{ratio:.3}x; CPU {:.1} vs {:.1} us/req",
                    r.cpu_us_per_req, m.cpu_us_per_req
                ),
                ratio >= 0.97,
            ));
        }
        if let (Some(m), Some(r)) = (find(rows, "mesh", 1), find(rows, "mesh-routes", 1)) {
            let added = r.p50_us - m.p50_us;
            out.push(Check::new(
                "mesh-routes p50 <= mesh p50 + 1 us at c1",
                format!("{added:+.1} us"),
                added <= 1.0,
            ));
        }
        for (what, times) in [
            ("one file of the set changed", one),
            ("every document changed", all),
        ] {
            if times.is_empty() {
                continue;
            }
            let mut sorted = times.to_vec();
            sorted.sort_by(f64::total_cmp);
            let max = sorted[sorted.len() - 1];
            out.push(Check::new(
                format!("reload of {RELOAD_HOSTS} VirtualServices + {RELOAD_HOSTS} DestinationRules validated and swapped <= 50 ms ({what})"),
                format!("median {:.1} ms, max {max:.1} ms over {} reloads", sorted[sorted.len() / 2], sorted.len()),
                max <= 50.0,
            ));
        }
        if !one.is_empty() && sample.requests > 0 {
            out.push(Check::new(
                "no failed request during the reloads (c32)",
                format!("{} errors of {} requests", sample.errors, sample.requests),
                sample.errors == 0 && sample.requests > 0,
            ));
        }
        out
    }
}
