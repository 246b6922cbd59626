//! Loading whole document sets: Bookinfo's documents, every error class with its field path,
//! host names per namespace.

use std::path::PathBuf;

use super::*;
use crate::{
    route::{Abort, RequestView},
    tls::ServerTlsMode,
};

fn bookinfo(dir: &str, file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/bookinfo")
        .join(dir)
        .join(file)
}

fn load_one(text: &str) -> Result<ConfigSet, ConfigErrors> {
    load_texts(
        &[("test.yaml", text)],
        &Workload::default(),
        &LoadOptions::default(),
    )
}

/// The single error of a rejected set: (document, field, reason).
fn error_of(text: &str) -> (String, String, String) {
    let errs = load_one(text).expect_err("the set should be rejected");
    let e: Vec<_> = errs.errors().collect();
    assert_eq!(e.len(), 1, "expected one error, got {errs}");
    (
        e[0].document.clone(),
        e[0].field.clone(),
        e[0].reason.clone(),
    )
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

const DR: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: reviews }
spec:
  host: reviews
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
"#;

fn with_dr(vs_spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: reviews }}\nspec:\n{vs_spec}\n---\n{DR}"
    )
}

#[test]
fn bookinfo_documents_load_as_istio_writes_them() {
    let set = load(
        &[
            bookinfo("networking", "destination-rule-all.yaml"),
            bookinfo("networking", "virtual-service-reviews-test-v2.yaml"),
            bookinfo("networking", "virtual-service-ratings-test-abort.yaml"),
            bookinfo("networking", "bookinfo-gateway.yaml"),
            bookinfo("security", "authorization-policies.yaml"),
            bookinfo("security", "peer-authentication-strict.yaml"),
        ],
        &Workload::new("default", [("app", "ratings")]),
        &LoadOptions::default(),
    )
    .unwrap();
    // The Gateway and the VirtualService bound to it are skipped, with warnings naming them.
    let warnings: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Gateway default/bookinfo-gateway")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("VirtualService default/bookinfo")),
        "{warnings:?}"
    );
    let table = set.route_table(REVIEWS).unwrap();
    let req = http::Request::get("http://reviews:9080/reviews/0")
        .header("end-user", "jason")
        .body(())
        .unwrap();
    let (_, route) = table.find(&RequestView::of(&req, 9080)).unwrap();
    assert_eq!(
        route.backends.backends()[0].backend.subset.as_deref(),
        Some("v2")
    );
    let ratings = set
        .route_table("ratings.default.svc.cluster.local")
        .unwrap();
    let fault = ratings.routes[0].fault.as_ref().unwrap();
    assert_eq!(fault.abort.unwrap().0, Abort::Http(500));
    let dr = set.destination_rule(REVIEWS).unwrap();
    assert_eq!(dr.subsets.len(), 3);
    // ratings' policy lets only reviews in; STRICT mTLS everywhere.
    let authz = set.authorizer();
    let reviews_id: crate::SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
        .parse()
        .unwrap();
    let pp: crate::SpiffeId = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        .parse()
        .unwrap();
    assert!(
        authz
            .evaluate(Some(&reviews_id), &http::Method::GET, "/ratings/0")
            .allowed
    );
    assert!(
        !authz
            .evaluate(Some(&pp), &http::Method::GET, "/ratings/0")
            .allowed
    );
    assert_eq!(set.peer_mode(9080), ServerTlsMode::Strict);
}

#[test]
fn every_bookinfo_example_file_is_valid_on_its_own() {
    for dir in ["networking", "security"] {
        let d = bookinfo(dir, "");
        for f in load::files(&[d]).unwrap() {
            let mut paths = vec![f.clone()];
            if dir == "networking" {
                paths.push(bookinfo("networking", "destination-rule-all.yaml"));
            }
            load(&paths, &Workload::default(), &LoadOptions::default())
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }
}

#[test]
fn a_directory_loads_with_later_documents_replacing_earlier_ones() {
    // As `kubectl apply -f dir/` does: same kind and name, the later file wins.
    let set = load(
        &[bookinfo("networking", "")],
        &Workload::default(),
        &LoadOptions::default(),
    )
    .unwrap();
    let replaced = set
        .warnings()
        .iter()
        .filter(|w| w.reason.contains("replaces the document"))
        .count();
    assert!(replaced >= 4, "{:?}", set.warnings());
}

#[test]
fn multi_document_file_with_all_five_kinds() {
    let text = format!(
        "{}\n---\n{DR}\n---\n{}\n---\n{}\n---\n{}",
        "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}",
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [api.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.9, labels: {version: v1}}]",
        "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: allow-all}\nspec:\n  rules: [{}]",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec:\n  mtls: {mode: PERMISSIVE}",
    );
    let set = load_one(&text).unwrap();
    assert!(set.route_table(REVIEWS).is_some());
    assert!(set.destination_rule(REVIEWS).is_some());
    let (se, port) = set.service_entry("api.example.com", 80).unwrap();
    assert_eq!(se.static_endpoints(port)[0].addr.to_string(), "10.0.0.9:80");
    assert!(
        set.authorizer()
            .evaluate(None, &http::Method::GET, "/")
            .allowed
    );
    assert_eq!(set.peer_mode(80), ServerTlsMode::Permissive);
    assert_eq!(set.documents(), 5);
    // The same text, the same version; another text, another.
    assert_eq!(load_one(&text).unwrap().version(), set.version());
    assert_ne!(
        load_one(&format!("{text}\n# edit")).unwrap().version(),
        set.version()
    );
}

#[test]
fn each_error_class_names_file_document_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n      weight: 0",
            "spec.http[0].route",
            "total destination weight is 0",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v9}",
            "spec.http[0].route[0].destination.subset",
            "defined by no DestinationRule",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - match: [{uri: {regex: \"(\"}}]\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].match[0].uri.regex",
            "invalid regex",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - timeout: 10\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].timeout",
            "expected a string",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - timeout: 500us\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].timeout",
            "1ms",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weigth: 10",
            "spec.http[0].route[0].weigth",
            "unknown field",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - corsPolicy: {allowOrigins: [{exact: x}]}\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].corsPolicy",
            "not implemented by mesh",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - retries: {attempts: 0, perTryTimeout: 1s}\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].retries",
            "attempts are set to 0",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - retries: {attempts: 2, retryOn: \"5xx,bogus\"}\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].retries.retryOn",
            "bogus",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - fault: {}\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].fault",
            "delay or an abort",
        ),
        (
            "  hosts: [reviews]\n  http:\n  - fault: {abort: {grpcStatus: NOPE, percentage: {value: 10}}}\n    route:\n    - destination: {host: reviews, subset: v1}",
            "spec.http[0].fault.abort.grpcStatus",
            "NOPE",
        ),
        (
            "  hosts: [\"*\"]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}",
            "spec.hosts[0]",
            "not allowed",
        ),
    ];
    for (spec, field, reason) in cases {
        let (doc, f, r) = error_of(&with_dr(spec));
        assert_eq!(doc, "VirtualService default/reviews", "{spec}");
        assert_eq!(&f, field, "{spec}: {r}");
        assert!(r.contains(reason), "{spec}: {r:?} should say {reason:?}");
    }
    // The rendered error names the file too.
    let errs = load_one(&with_dr(cases[0].0)).unwrap_err().to_string();
    assert!(
        errs.contains("test.yaml: VirtualService default/reviews: spec.http[0].route:"),
        "{errs}"
    );
}

#[test]
fn lenient_mode_turns_unimplemented_fields_into_warnings() {
    let text = with_dr(
        "  hosts: [reviews]\n  http:\n  - corsPolicy: {allowOrigins: [{exact: x}]}\n    route:\n    - destination: {host: reviews, subset: v1}",
    );
    let set = load_texts(
        &[("t.yaml", &text)],
        &Workload::default(),
        &LoadOptions { lenient: true },
    )
    .unwrap();
    assert!(
        set.warnings()
            .iter()
            .any(|w| w.field == "spec.http[0].corsPolicy")
    );
}

#[test]
fn documents_of_unknown_kinds_and_versions_are_errors() {
    let (_, f, r) = error_of("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {}");
    assert_eq!(f, "kind");
    assert!(r.contains("not a kind mesh reads"), "{r}");
    let (_, f, _) = error_of(
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}",
    );
    assert_eq!(f, "apiVersion");
    let (_, f, r) = error_of(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: x}\nspec: {}",
    );
    assert_eq!(f, "kind");
    assert!(r.contains("not implemented"), "{r}");
    let e = load_one("# nothing\n").unwrap_err().to_string();
    assert!(e.contains("the file is empty"), "{e}");
}

#[test]
fn two_virtual_services_for_one_host_are_rejected() {
    let vs = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  http: [{{route: [{{destination: {{host: reviews}}}}]}}]"
        )
    };
    let text = format!("{}\n---\n{}", vs("a"), vs("b"));
    let (doc, field, reason) = error_of(&text);
    assert_eq!(
        (doc.as_str(), field.as_str()),
        ("VirtualService default/b", "spec.hosts")
    );
    assert!(reason.contains("VirtualService default/a"), "{reason}");
}

#[test]
fn short_names_expand_in_the_document_namespace_only() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: prod}\nspec:\n  hosts: [reviews, ratings.other]\n  http: [{route: [{destination: {host: reviews}}]}]";
    let set = load_one(text).unwrap();
    assert!(set.route_table("reviews.prod.svc.cluster.local").is_some());
    assert!(
        set.route_table("ratings.other").is_some(),
        "a name with a dot is literal"
    );
    assert!(set.route_table("ratings.other.svc.cluster.local").is_none());
    let backend = &set
        .route_table("reviews.prod.svc.cluster.local")
        .unwrap()
        .routes[0]
        .backends
        .backends()[0]
        .backend;
    assert_eq!(&*backend.host, "reviews.prod.svc.cluster.local");
}

#[test]
fn retries_and_weights_read_as_current_istio_reads_them() {
    let text = with_dr(
        "  hosts: [reviews]\n  http:\n  - retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"gateway-error,connect-failure,503,unavailable\"}\n    timeout: 10s\n    route:\n    - destination: {host: reviews, subset: v1}\n      weight: 3\n    - destination: {host: reviews, subset: v2}",
    );
    let set = load_one(&text).unwrap();
    let route = &set.route_table(REVIEWS).unwrap().routes[0];
    let r = route.overrides.retries.as_ref().unwrap();
    assert_eq!(r.attempts, 3);
    assert_eq!(r.per_try_timeout, Some(std::time::Duration::from_secs(2)));
    assert_eq!(r.retry_on.statuses, vec![502, 503, 504]);
    assert_eq!(r.retry_on.grpc_statuses, vec![14]);
    assert!(r.retry_on.connect_failure && !r.retry_on.refused_stream);
    assert_eq!(
        route.overrides.timeout,
        Some(std::time::Duration::from_secs(10))
    );
    // An omitted weight is 0: everything to v1.
    assert_eq!(route.backends.share(0), 1.0);
    assert_eq!(route.backends.share(1), 0.0);
}
