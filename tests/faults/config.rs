//! Config files replaced badly under load: written in pieces, truncated, deleted and
//! re-created, or swapped by symlink as Kubernetes updates a ConfigMap volume. A half-written
//! file is never applied: the old config stays until a complete valid one is there.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use mesh::{core::Mesh, hyper::MeshClient};

use super::{
    Load,
    common::{Backend, backend, eventually},
    tally,
};

const URI: &str = "http://reviews.default:9080/";

const DR: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

fn vs_to(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
    )
}

/// Three versions of reviews, an endpoints file and a directory of Istio documents.
struct Fixture {
    backends: Vec<Backend>,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Fixture {
        let mut backends = Vec::new();
        for v in ["v1", "v2", "v3"] {
            backends.push(backend(v).await);
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("istio")).unwrap();
        let f = Fixture { backends, dir };
        std::fs::write(f.endpoints(), f.endpoints_yaml(&["v1", "v2", "v3"])).unwrap();
        std::fs::write(f.istio().join("destination-rule.yaml"), DR).unwrap();
        std::fs::write(f.istio().join("virtual-service.yaml"), vs_to("v1")).unwrap();
        f
    }

    fn endpoints(&self) -> PathBuf {
        self.dir.path().join("endpoints.yaml")
    }

    fn istio(&self) -> PathBuf {
        self.dir.path().join("istio")
    }

    fn endpoints_yaml(&self, versions: &[&str]) -> String {
        let mut s = String::from("services:\n  reviews.default:9080:\n");
        for b in self
            .backends
            .iter()
            .filter(|b| versions.contains(&b.name.as_str()))
        {
            s.push_str(&format!(
                "    - {{address: {}, labels: {{version: {}}}}}\n",
                b.addr, b.name
            ));
        }
        s
    }

    fn client(
        &self,
        endpoints: &Path,
        istio: &Path,
    ) -> MeshClient<http_body_util::Empty<bytes::Bytes>> {
        let mesh = Mesh::builder()
            .endpoints_file(endpoints, Default::default())
            .istio_config(istio)
            .without_dns_fallback()
            .build()
            .unwrap();
        MeshClient::new(mesh)
    }
}

/// Answers by backend in `seen`'s answers after `from`.
fn answers_since(load: &Load, from: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, b) in &load.seen.lock().unwrap().answers[from..] {
        *m.entry(b.clone()).or_default() += 1;
    }
    m
}

fn answered(load: &Load) -> usize {
    load.seen.lock().unwrap().answers.len()
}

/// Whether, within 10 s, a 100 ms window comes in which only `version` answers.
async fn only_answers(load: &Load, version: &str) -> bool {
    eventually(Duration::from_secs(10), async || {
        let now = answered(load);
        tokio::time::sleep(Duration::from_millis(100)).await;
        answers_since(load, now).keys().collect::<Vec<_>>() == [version]
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_written_in_pieces_is_never_applied_half_written() {
    let f = Fixture::new().await;
    let client = f.client(&f.endpoints(), &f.istio());
    let load = Load::start(&client, URI, 4, 200_000, Duration::from_secs(60));
    load.until(200).await;
    assert_eq!(answers_since(&load, 0).keys().collect::<Vec<_>>(), ["v1"]);

    // The new document: jason to v3, everyone else to v2. Its first piece alone is a valid
    // VirtualService that routes nobody but jason: applied, every other request would fail.
    let new = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n  - route: [{destination: {host: reviews, subset: v2}}]\n";
    let cut = new.find("  - route").unwrap();
    let before = answered(&load);
    {
        // One writer: truncates, writes in three pieces with pauses far over the watcher's
        // debounce, then closes.
        let mut file = std::fs::File::create(f.istio().join("virtual-service.yaml")).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.write_all(&new.as_bytes()[..cut]).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.write_all(&new.as_bytes()[cut..cut + 10]).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.write_all(&new.as_bytes()[cut + 10..]).unwrap();
    }
    let during = answers_since(&load, before);
    assert!(
        only_answers(&load, "v2").await,
        "the complete document never took effect: {:?}; answers {:?}; failures {:?}",
        client.mesh().config().map(|s| s.stats()),
        answers_since(&load, before),
        tally(&load.seen.lock().unwrap().failures)
    );
    let seen = load.finish().await;
    println!(
        "VirtualService written in 3 pieces over 0.9 s: answers while written {during:?}; {} requests, failures {:?}",
        seen.total(),
        tally(&seen.failures)
    );
    assert!(seen.failures.is_empty(), "{:?}", tally(&seen.failures));
    assert_eq!(
        during.keys().collect::<Vec<_>>(),
        ["v1"],
        "a half-written document was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_deleted_and_recreated_files_keep_the_last_good_config() {
    let f = Fixture::new().await;
    // All versions by one route: the endpoints file decides who answers.
    std::fs::remove_file(f.istio().join("virtual-service.yaml")).unwrap();
    std::fs::write(f.endpoints(), f.endpoints_yaml(&["v1"])).unwrap();
    let client = f.client(&f.endpoints(), &f.istio());
    let load = Load::start(&client, URI, 4, 200_000, Duration::from_secs(60));
    load.until(200).await;

    // Truncated (an empty file), then deleted, then an Istio document truncated mid-way.
    std::fs::File::create(f.endpoints()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::remove_file(f.endpoints()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let vs = vs_to("v3");
    std::fs::write(f.istio().join("virtual-service.yaml"), &vs[..vs.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = answers_since(&load, 0);
    // Re-created whole: v2 only, and the document completed (to v2 as well).
    std::fs::write(f.endpoints(), f.endpoints_yaml(&["v2"])).unwrap();
    std::fs::write(f.istio().join("virtual-service.yaml"), vs_to("v2")).unwrap();
    assert!(
        only_answers(&load, "v2").await,
        "the re-created files never took effect"
    );
    let stats = client.mesh().config().map(|s| s.stats());
    let seen = load.finish().await;
    println!(
        "endpoints file truncated, deleted, re-created; a document cut in half: answers meanwhile {during:?}; \
         {} requests, failures {:?}; config store {stats:?}",
        seen.total(),
        tally(&seen.failures)
    );
    assert_eq!(during.keys().collect::<Vec<_>>(), ["v1"]);
    assert!(seen.failures.is_empty(), "{:?}", tally(&seen.failures));
}

/// Lays out `dir` as kubelet lays out a ConfigMap volume: the files in a timestamped
/// directory, `..data` a symlink to it, and each file a symlink through `..data`.
fn configmap(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    // The swap itself: one rename, atomic.
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_applies_the_new_config_whole() {
    let f = Fixture::new().await;
    let (eps, istio) = (f.dir.path().join("eps"), f.dir.path().join("istio-cm"));
    std::fs::create_dir(&eps).unwrap();
    std::fs::create_dir(&istio).unwrap();
    configmap(
        &eps,
        "2026_12_02_a",
        &[("endpoints.yaml", &f.endpoints_yaml(&["v1", "v2"]))],
    );
    configmap(
        &istio,
        "2026_12_02_a",
        &[
            ("destination-rule.yaml", DR),
            ("virtual-service.yaml", &vs_to("v1")),
        ],
    );
    let client = f.client(&eps.join("endpoints.yaml"), &istio);
    let load = Load::start(&client, URI, 4, 200_000, Duration::from_secs(60));
    load.until(200).await;
    assert_eq!(answers_since(&load, 0).keys().collect::<Vec<_>>(), ["v1"]);

    // One update of the routes: v1 → v2.
    let before = answered(&load);
    configmap(
        &istio,
        "2026_12_02_b",
        &[
            ("destination-rule.yaml", DR),
            ("virtual-service.yaml", &vs_to("v2")),
        ],
    );
    std::fs::remove_dir_all(istio.join("..2026_12_02_a")).unwrap();
    assert!(
        only_answers(&load, "v2").await,
        "the swapped routes never took effect"
    );
    let routes = answers_since(&load, before);
    // Then, as an operator does it, the endpoints first (v3 joins), the routes after (to v3).
    configmap(
        &eps,
        "2026_12_02_b",
        &[("endpoints.yaml", &f.endpoints_yaml(&["v1", "v2", "v3"]))],
    );
    std::fs::remove_dir_all(eps.join("..2026_12_02_a")).unwrap();
    // The watcher applies a change within tens of milliseconds; leave it a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    configmap(
        &istio,
        "2026_12_02_c",
        &[
            ("destination-rule.yaml", DR),
            ("virtual-service.yaml", &vs_to("v3")),
        ],
    );
    assert!(
        only_answers(&load, "v3").await,
        "the swapped endpoints and routes never took effect"
    );
    let seen = load.finish().await;
    println!(
        "ConfigMap symlink swaps: answers across the route swap {routes:?}; {} requests, failures {:?}",
        seen.total(),
        tally(&seen.failures)
    );
    assert!(routes.keys().all(|k| k == "v1" || k == "v2"), "{routes:?}");
    assert!(seen.failures.is_empty(), "{:?}", tally(&seen.failures));
}
