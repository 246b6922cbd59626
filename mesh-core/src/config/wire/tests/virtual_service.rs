//! Tests of the virtual service wire types.
use super::super::PortSelector;
use super::super::test_support::{documents, spec};
use super::*;

fn dest(host: &str, subset: &str) -> Option<Destination> {
    Some(Destination {
        host: Some(host.into()),
        subset: Some(subset.into()),
        port: None,
    })
}

fn exact(s: &str) -> StringMatch {
    StringMatch {
        exact: Some(s.into()),
        ..StringMatch::default()
    }
}

/// `samples/bookinfo/networking/virtual-service-all-v1.yaml`, verbatim.
const ALL_V1: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
spec:
  hosts:
  - productpage
  http:
  - route:
    - destination:
        host: productpage
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - route:
    - destination:
        host: ratings
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
        subset: v1
---
";

#[test]
fn bookinfo_all_v1() {
    let docs = documents::<VirtualServiceSpec>(ALL_V1);
    assert_eq!(docs.len(), 4);
    for (header, vs) in &docs {
        let name = header.metadata.name.as_deref().unwrap();
        assert_eq!(header.kind, "VirtualService");
        assert_eq!(vs.hosts, [name]);
        assert_eq!(vs.http.len(), 1);
        assert!(vs.http[0].r#match.is_empty());
        assert_eq!(vs.http[0].route.len(), 1);
        assert_eq!(vs.http[0].route[0].destination, dest(name, "v1"));
        assert_eq!(vs.http[0].route[0].weight, None);
    }
}

/// `samples/bookinfo/networking/virtual-service-reviews-90-10.yaml`, verbatim.
const REVIEWS_90_10: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
";

#[test]
fn bookinfo_reviews_90_10() {
    let (_, vs) = documents::<VirtualServiceSpec>(REVIEWS_90_10).remove(0);
    let route = &vs.http[0].route;
    assert_eq!(route[0].destination, dest("reviews", "v1"));
    assert_eq!(route[0].weight, Some(90));
    assert_eq!(route[1].destination, dest("reviews", "v2"));
    assert_eq!(route[1].weight, Some(10));
}

/// `samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml` (spec verbatim).
const REVIEWS_TEST_V2: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
";

/// `samples/bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml`, verbatim.
const REVIEWS_JASON_V2_V3: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v3
";

#[test]
fn bookinfo_jason_header_match() {
    for (yaml, fallback) in [(REVIEWS_TEST_V2, "v1"), (REVIEWS_JASON_V2_V3, "v3")] {
        let (_, vs) = documents::<VirtualServiceSpec>(yaml).remove(0);
        assert_eq!(vs.http.len(), 2);
        let first = &vs.http[0];
        assert_eq!(first.r#match.len(), 1);
        assert_eq!(first.r#match[0].headers["end-user"], exact("jason"));
        assert_eq!(first.route[0].destination, dest("reviews", "v2"));
        assert!(vs.http[1].r#match.is_empty());
        assert_eq!(vs.http[1].route[0].destination, dest("reviews", fallback));
    }
}

/// `samples/bookinfo/networking/virtual-service-ratings-test-delay.yaml`, verbatim.
const RATINGS_TEST_DELAY: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
";

#[test]
fn bookinfo_ratings_test_delay() {
    let (_, vs) = documents::<VirtualServiceSpec>(RATINGS_TEST_DELAY).remove(0);
    let delay = vs.http[0].fault.as_ref().unwrap().delay.as_ref().unwrap();
    assert_eq!(delay.fixed_delay.as_deref(), Some("7s"));
    assert_eq!(delay.percentage, Some(Percent { value: Some(100.0) }));
    assert_eq!(delay.percent, None);
    assert!(vs.http[0].fault.as_ref().unwrap().abort.is_none());
    assert!(vs.http[1].fault.is_none());
}

/// `samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml` (as stored, `v1alpha3`).
const RATINGS_TEST_ABORT: &str = "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
";

#[test]
fn bookinfo_ratings_test_abort() {
    let (header, vs) = documents::<VirtualServiceSpec>(RATINGS_TEST_ABORT).remove(0);
    assert_eq!(header.api_version, "networking.istio.io/v1alpha3");
    let abort = vs.http[0].fault.as_ref().unwrap().abort.as_ref().unwrap();
    assert_eq!(abort.http_status, Some(500));
    assert_eq!(abort.percentage, Some(Percent { value: Some(100.0) }));
    assert_eq!(abort.grpc_status, None);
}

#[test]
fn deprecated_delay_and_abort_percent() {
    let f: HttpFaultInjection = spec("delay: {percent: 100, fixedDelay: 7s}\n").unwrap();
    assert_eq!(f.delay.unwrap().percent, Some(100));
    // Old samples wrote `abort.percent`; Istio's current schema no longer has it, but
    // copies of its samples in use still do.
    let f: HttpFaultInjection = spec("abort: {percent: 100, httpStatus: 500}\n").unwrap();
    assert_eq!(f.abort.unwrap().percent, Some(100));
    let f: HttpFaultInjection =
        spec("abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}\n").unwrap();
    assert_eq!(f.abort.unwrap().grpc_status.as_deref(), Some("UNAVAILABLE"));
}

#[test]
fn typo_is_rejected_with_its_name() {
    let err = spec::<VirtualServiceSpec>(
        "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews}\n    weigth: 10\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("weigth"), "{err}");
    let err = spec::<VirtualServiceSpec>(
            "hosts: [reviews]\nhttp:\n- retries: {attempts: 3, perTryTimout: 2s}\n  route:\n  - destination: {host: reviews}\n",
        )
        .unwrap_err();
    assert!(err.to_string().contains("perTryTimout"), "{err}");
    let err = spec::<VirtualServiceSpec>("host: [reviews]\n").unwrap_err();
    assert!(err.to_string().contains("host"), "{err}");
}

#[test]
fn every_http_route_field() {
    let yaml = r#"
hosts: [reviews.prod.svc.cluster.local, "*.example.com"]
gateways: [mesh, istio-system/gw]
exportTo: ["."]
http:
- name: r1
  match:
  - name: m1
    uri: {prefix: /api}
    scheme: {exact: https}
    method: {exact: GET}
    authority: {regex: "api\\..*"}
    headers: {x-present: {}}
    withoutHeaders: {x-debug: {exact: "1"}}
    queryParams: {flag: {exact: ""}}
    port: 9080
    sourceLabels: {app: productpage}
    sourceNamespace: bookinfo
    gateways: [mesh]
    ignoreUriCase: true
    statPrefix: api
  route:
  - destination: {host: reviews, subset: v2, port: {number: 9080}}
    weight: 75
    headers:
      request: {set: {x-v: "2"}}
  rewrite:
    uri: /v2
    authority: reviews-v2
  timeout: 1.5s
  retries:
    attempts: 3
    perTryTimeout: 500ms
    retryOn: 5xx,reset,503
    retryRemoteLocalities: true
    retryIgnorePreviousHosts: false
    backoff: 50ms
  fault:
    delay: {fixedDelay: 1s, exponentialDelay: 2s, percentage: {value: 10}}
    abort: {http2Error: PROTOCOL_ERROR, percentage: {value: 1}}
  mirror: {host: reviews, subset: v3}
  mirrorPercentage: {value: 50.5}
  mirrorPercent: 50
  mirror_percent: 40
  mirrors:
  - destination: {host: shadow}
    percentage: {value: 5}
  corsPolicy:
    allowOrigin: [https://a.example]
    allowOrigins: [{exact: https://b.example}, {regex: "https://.*\\.c\\.example"}]
    allowMethods: [GET, POST]
    allowHeaders: [x-a]
    exposeHeaders: [x-b]
    maxAge: 24h
    allowCredentials: true
    unmatchedPreflights: IGNORE
  headers:
    request: {add: {x-a: "1"}, remove: [x-b]}
    response: {set: {x-c: "3"}}
- redirect: {uri: /new, authority: new.example, port: 8443, scheme: https, redirectCode: 302}
- redirect: {prefixRewrite: /p, derivePort: FROM_REQUEST_PORT}
- directResponse: {status: 503, body: {string: unavailable}}
- directResponse: {status: 200, body: {bytes: aGVsbG8=}}
- delegate: {name: reviews-delegate, namespace: other}
- rewrite: {uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\2/instance/\\1"}}
  route: [{destination: {host: reviews}}]
"#;
    let vs: VirtualServiceSpec = spec(yaml).unwrap();
    assert_eq!(vs.export_to, ["."]);
    let r = &vs.http[0];
    let m = &r.r#match[0];
    assert_eq!(m.uri.as_ref().unwrap().prefix.as_deref(), Some("/api"));
    assert_eq!(m.headers["x-present"], StringMatch::default());
    assert_eq!(m.query_params["flag"], exact(""));
    assert_eq!(m.without_headers["x-debug"], exact("1"));
    assert_eq!(m.port, Some(9080));
    assert_eq!(m.ignore_uri_case, Some(true));
    assert_eq!(m.stat_prefix.as_deref(), Some("api"));
    assert_eq!(
        r.route[0].destination.as_ref().unwrap().port,
        Some(PortSelector { number: Some(9080) })
    );
    let retries = r.retries.as_ref().unwrap();
    assert_eq!(retries.attempts, Some(3));
    assert_eq!(retries.per_try_timeout.as_deref(), Some("500ms"));
    assert_eq!(retries.retry_ignore_previous_hosts, Some(false));
    assert_eq!(retries.backoff.as_deref(), Some("50ms"));
    assert_eq!(r.timeout.as_deref(), Some("1.5s"));
    assert_eq!(r.mirror_percentage, Some(Percent { value: Some(50.5) }));
    assert_eq!(r.mirror_percent, Some(50));
    assert_eq!(r.mirror_percent_snake, Some(40));
    assert_eq!(r.mirrors[0].percentage, Some(Percent { value: Some(5.0) }));
    let cors = r.cors_policy.as_ref().unwrap();
    assert_eq!(cors.allow_origins.len(), 2);
    assert_eq!(cors.unmatched_preflights.as_deref(), Some("IGNORE"));
    assert_eq!(
        vs.http[1].redirect.as_ref().unwrap().redirect_code,
        Some(302)
    );
    assert_eq!(
        vs.http[2].redirect.as_ref().unwrap().derive_port.as_deref(),
        Some("FROM_REQUEST_PORT")
    );
    assert_eq!(
        vs.http[3].direct_response.as_ref().unwrap().status,
        Some(503)
    );
    assert_eq!(
        vs.http[4]
            .direct_response
            .as_ref()
            .unwrap()
            .body
            .as_ref()
            .unwrap()
            .bytes
            .as_deref(),
        Some("aGVsbG8=")
    );
    assert_eq!(
        vs.http[5].delegate.as_ref().unwrap().namespace.as_deref(),
        Some("other")
    );
    let regex = vs.http[6]
        .rewrite
        .as_ref()
        .unwrap()
        .uri_regex_rewrite
        .as_ref()
        .unwrap();
    assert_eq!(regex.r#match.as_deref(), Some("^/service/([^/]+)(/.*)$"));
}

#[test]
fn tcp_and_tls_routes() {
    let yaml = r#"
hosts: ["*.wikipedia.org"]
tls:
- match:
  - port: 443
    sniHosts: [en.wikipedia.org]
    destinationSubnets: [10.0.0.0/8]
    sourceLabels: {app: a}
    gateways: [mesh]
    sourceNamespace: ns
  route:
  - destination: {host: en.wikipedia.org}
    weight: 100
tcp:
- match:
  - port: 27017
    destinationSubnets: [10.1.0.0/16]
    sourceSubnet: 10.2.0.0/16
  route:
  - destination: {host: mongo.backup.svc.cluster.local, port: {number: 5555}}
"#;
    let vs: VirtualServiceSpec = spec(yaml).unwrap();
    assert_eq!(vs.tls[0].r#match[0].sni_hosts, ["en.wikipedia.org"]);
    assert_eq!(vs.tls[0].route[0].weight, Some(100));
    assert_eq!(
        vs.tcp[0].r#match[0].source_subnet.as_deref(),
        Some("10.2.0.0/16")
    );
    // TLS matches have no `sourceSubnet` in Istio's schema (reserved).
    let err = spec::<TlsRoute>("match: [{sniHosts: [a], sourceSubnet: 10.0.0.0/8}]\n").unwrap_err();
    assert!(err.to_string().contains("sourceSubnet"), "{err}");
    // Nor does HTTP have the long-removed `websocketUpgrade`.
    let err = spec::<HttpRoute>("websocketUpgrade: true\n").unwrap_err();
    assert!(err.to_string().contains("websocketUpgrade"), "{err}");
}

#[test]
fn serializes_back_with_istio_names() {
    let yaml = "http:\n- match: [{uri: {exact: /a}, ignoreUriCase: true}]\n  mirror_percent: 5\n  mirrorPercentage: {value: 5}\n  retries: {perTryTimeout: 1s}\n";
    let vs: VirtualServiceSpec = spec(yaml).unwrap();
    let json = serde_json::to_value(&vs).unwrap();
    let route = &json["http"][0];
    assert_eq!(route["match"][0]["ignoreUriCase"], true);
    assert_eq!(route["mirror_percent"], 5);
    assert_eq!(route["retries"]["perTryTimeout"], "1s");
    assert!(
        json.get("hosts").is_none(),
        "empty lists are omitted: {json}"
    );
    assert_eq!(
        serde_json::from_value::<VirtualServiceSpec>(json).unwrap(),
        vs
    );
}

#[test]
fn empty_and_null() {
    assert_eq!(
        spec::<VirtualServiceSpec>("{}\n").unwrap(),
        VirtualServiceSpec::default()
    );
    let vs: VirtualServiceSpec = spec("hosts: [a]\nhttp:\ngateways: ~\n").unwrap();
    assert!(vs.http.is_empty() && vs.gateways.is_empty());
}
