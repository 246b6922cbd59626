//! `mesh apply` and `mesh get` against a real etcd on loopback (feature `etcd`).

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd on free ports with its own data directory, killed by pid on drop.
struct Etcd {
    _dir: tempfile::TempDir,
    url: String,
    child: Child,
}

impl Etcd {
    fn start() -> Option<Self> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is not installed (scripts/deps)"
            );
            eprintln!("SKIPPED: etcd is not installed (run scripts/deps as root)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &format!("t={peer}"),
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let e = Self {
            _dir: dir,
            url,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mesh(&["get", "--etcd", &e.url]).status.success() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(e)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .unwrap()
}

const DR: &str = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n";
const VS: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n";

#[test]
fn etcd_mesh_apply_writes_valid_documents_refuses_invalid_ones_and_mesh_get_lists_them() {
    let Some(etcd) = Etcd::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("reviews.yaml");
    std::fs::write(&good, format!("{DR}---\n{VS}")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        VS.replace("subset: v1", "subset: v9")
            .replace("name: reviews}", "name: other}"),
    )
    .unwrap();

    let out = mesh(&["apply", "-f", bad.to_str().unwrap(), "--etcd", &etcd.url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad.yaml") && err.contains("subset") && err.contains("nothing was written"),
        "{err}"
    );

    let out = mesh(&["apply", "-f", good.to_str().unwrap(), "--etcd", &etcd.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("/mesh/config/VirtualService/default/reviews written"),
        "{text}"
    );
    let revision: i64 = text
        .lines()
        .last()
        .unwrap()
        .trim_start_matches("revision ")
        .parse()
        .unwrap();

    // Applying the same again writes nothing.
    let out = mesh(&["apply", "-f", good.to_str().unwrap(), "--etcd", &etcd.url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));

    let out = mesh(&["get", "--etcd", &etcd.url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("VirtualService default/reviews")
            && text.contains("DestinationRule default/reviews"),
        "{text}"
    );
    assert!(text.contains("2 under /mesh/config/"), "{text}");

    // A stale --expect-revision is refused once something changed after it.
    std::fs::write(
        &good,
        format!(
            "{DR}---\n{}",
            VS.replace("hosts: [reviews]", "hosts: [reviews, reviews.default]")
        ),
    )
    .unwrap();
    let out = mesh(&[
        "apply",
        "-f",
        good.to_str().unwrap(),
        "--etcd",
        &etcd.url,
        "--expect-revision",
        &revision.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = mesh(&[
        "apply",
        "-f",
        bad.to_str().unwrap().replace("bad", "reviews").as_str(),
        "--etcd",
        &etcd.url,
        "--expect-revision",
        &revision.to_string(),
    ]);
    // Same content as live: nothing to write, but the documents changed after `revision`.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict"));
}
