//! The `mesh` binary as a user runs it.

use std::{path::PathBuf, process::Command};

fn mesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("the mesh binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn bookinfo(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bookinfo")
        .join(rel)
        .display()
        .to_string()
}

#[test]
fn check_accepts_every_bookinfo_document_and_summarizes_routes() {
    for dir in ["networking", "security"] {
        let (code, out, err) = mesh(&["check", &bookinfo(dir)]);
        assert_eq!(code, 0, "{dir}: {err}");
        assert!(out.starts_with("valid:"), "{out}");
    }
    let (code, out, err) = mesh(&[
        "check",
        &bookinfo("networking/destination-rule-all.yaml"),
        &bookinfo("networking/virtual-service-reviews-90-10.yaml"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("reviews.default.svc.cluster.local (subset v1) 90.0 %"),
        "{out}"
    );
    assert!(
        out.contains("reviews.default.svc.cluster.local (subset v3) 10.0 %"),
        "{out}"
    );
    assert!(out.contains("subset v2 selects version=v2"), "{out}");
}

#[test]
fn check_fails_naming_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: prod}\nspec:\n  hosts: [reviews]\n  http:\n  - timeout: 5\n    route:\n    - destination: {host: reviews}\n      weigth: 3\n",
    )
    .unwrap();
    let (code, out, err) = mesh(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("bad.yaml: VirtualService prod/reviews: spec.http[0]"),
        "{err}"
    );
    assert!(err.contains("nothing would be applied"), "{err}");
    let (code, _, err) = mesh(&["check", "/nonexistent/dir"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn explain_shows_why_a_header_matched_route_took_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(
        &eps,
        "services:\n  reviews.default:9080:\n    - {address: 10.0.0.1:9080, labels: {version: v1}}\n    - {address: 10.0.0.2:9080, labels: {version: v2}}\n",
    )
    .unwrap();
    let args = |user: &str| {
        vec![
            "explain".to_owned(),
            "-f".into(),
            bookinfo("networking/destination-rule-all.yaml"),
            "-f".into(),
            bookinfo("networking/virtual-service-reviews-test-v2.yaml"),
            "-f".into(),
            bookinfo("security/authorization-policies.yaml"),
            "--endpoints".into(),
            eps.display().to_string(),
            "--as".into(),
            "cluster.local/ns/default/sa/bookinfo-productpage".into(),
            "GET".into(),
            "http://reviews:9080/reviews/0".into(),
            "-H".into(),
            format!("end-user: {user}"),
        ]
    };
    let jason = args("jason");
    let jason: Vec<&str> = jason.iter().map(String::as_str).collect();
    let (code, out, err) = mesh(&jason);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("MATCH spec.http[0]: match[0] matches"),
        "{out}"
    );
    assert!(
        out.contains("100.00 %  reviews.default.svc.cluster.local:9080 (subset v2)")
            || out.contains("(subset v2)"),
        "{out}"
    );
    assert!(out.contains("endpoint 10.0.0.2:9080"), "{out}");
    assert!(
        !out.contains("endpoint 10.0.0.1:9080"),
        "v1's endpoint is not in subset v2: {out}"
    );
    assert!(
        out.contains("allowed by AuthorizationPolicy default/reviews-viewer"),
        "{out}"
    );
    let alice = args("alice");
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    let (_, out, _) = mesh(&alice);
    assert!(
        out.contains(
            "no    spec.http[0]: match[0]: header end-user: \"alice\" is not exact \"jason\""
        ),
        "{out}"
    );
    assert!(out.contains("MATCH spec.http[1]"), "{out}");
}

#[test]
fn ca_initializes_and_issues() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = mesh(&["ca", "init", d]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ca.pem"), "{out}");
    let (code, out, err) = mesh(&[
        "ca",
        "issue",
        d,
        "spiffe://cluster.local/ns/default/sa/reviews",
        "reviews",
        "--san",
        "127.0.0.1",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("issued spiffe://cluster.local/ns/default/sa/reviews"),
        "{out}"
    );
    assert!(dir.path().join("reviews.pem").exists());
}
