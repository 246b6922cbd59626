//! Tests of the destination rule wire types.
use super::super::test_support::{documents, spec};
use super::*;

/// `samples/bookinfo/networking/destination-rule-all.yaml`, verbatim.
const ALL: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
";

/// `samples/bookinfo/networking/destination-rule-all-mtls.yaml`, verbatim.
const ALL_MTLS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: productpage
spec:
  host: productpage
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v2-mysql
    labels:
      version: v2-mysql
  - name: v2-mysql-vm
    labels:
      version: v2-mysql-vm
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: details
spec:
  host: details
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
";

#[test]
fn bookinfo_destination_rule_all() {
    for (yaml, mtls) in [(ALL, false), (ALL_MTLS, true)] {
        let docs = documents::<DestinationRuleSpec>(yaml);
        let names: Vec<_> = docs
            .iter()
            .map(|(h, _)| h.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["productpage", "reviews", "ratings", "details"]);
        for (header, dr) in &docs {
            assert_eq!(header.kind, "DestinationRule");
            assert_eq!(dr.host, header.metadata.name);
            for subset in &dr.subsets {
                assert_eq!(subset.labels["version"], *subset.name.as_ref().unwrap());
            }
            let tls = dr.traffic_policy.as_ref().and_then(|p| p.tls.as_ref());
            assert_eq!(
                tls.and_then(|t| t.mode.as_deref()),
                mtls.then_some("ISTIO_MUTUAL")
            );
        }
        assert_eq!(docs[2].1.subsets[3].name.as_deref(), Some("v2-mysql-vm"));
    }
}

#[test]
fn egress_google_apis_port_level_tls() {
    // From `samples/bookinfo/networking/egress-rule-google-apis.yaml`.
    let dr: DestinationRuleSpec = spec(
        "host: www.googleapis.com
trafficPolicy:
  loadBalancer:
    simple: ROUND_ROBIN
  portLevelSettings:
  - port:
      number: 443
    tls:
      mode: SIMPLE # initiates HTTPS when accessing www.googleapis.com
",
    )
    .unwrap();
    let policy = dr.traffic_policy.unwrap();
    assert_eq!(
        policy.load_balancer.unwrap().simple.as_deref(),
        Some("ROUND_ROBIN")
    );
    let port = &policy.port_level_settings[0];
    assert_eq!(port.port, Some(PortSelector { number: Some(443) }));
    assert_eq!(port.tls.as_ref().unwrap().mode.as_deref(), Some("SIMPLE"));
}

#[test]
fn every_traffic_policy_field() {
    let yaml = r#"
host: reviews.prod.svc.cluster.local
exportTo: ["*"]
workloadSelector: {matchLabels: {app: productpage}}
trafficPolicy:
  loadBalancer:
    consistentHash:
      httpCookie:
        name: user
        path: /
        ttl: 0s
        attributes: [{name: SameSite, value: Strict}, {name: Secure}]
      ringHash: {minimumRingSize: 2048}
    localityLbSetting:
      enabled: true
      distribute: [{from: us-west/zone1/*, to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]
      failover: [{from: us-east, to: eu-west}]
      failoverPriority: [topology.istio.io/network]
    warmupDurationSecs: 60s
    warmup: {duration: 60s, minimumPercent: 10, aggression: 1.5}
  connectionPool:
    tcp:
      maxConnections: 100
      connectTimeout: 30ms
      tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}
      maxConnectionDuration: 1h
      idleTimeout: 10m
    http:
      http1MaxPendingRequests: 10
      http2MaxRequests: 1000
      maxRequestsPerConnection: 10
      maxRetries: 3
      idleTimeout: 30s
      h2UpgradePolicy: UPGRADE
      useClientProtocol: true
      maxConcurrentStreams: 100
      http2KeepAlive: {interval: 10s, timeout: 3s}
  outlierDetection:
    consecutiveErrors: 7
    splitExternalLocalOriginErrors: true
    consecutiveLocalOriginFailures: 2
    consecutiveGatewayErrors: 3
    consecutive5xxErrors: 7
    interval: 5m
    baseEjectionTime: 15m
    maxEjectionPercent: 50
    minHealthPercent: 30
    outlierDetectionHttpErrorCodes: [500, 503]
  tls:
    mode: MUTUAL
    clientCertificate: /etc/certs/myclientcert.pem
    privateKey: /etc/certs/client_private_key.pem
    caCertificates: /etc/certs/rootcacerts.pem
    credentialName: client-credential
    subjectAltNames: [reviews.prod]
    sni: reviews.example.com
    insecureSkipVerify: false
    caCrl: /etc/certs/crl.pem
  tunnel: {protocol: CONNECT, targetHost: 192.168.1.2, targetPort: 443}
  proxyProtocol: {version: V2}
  retryBudget: {percent: 25.5, minRetryConcurrency: 5, budgetInterval: 1s}
subsets:
- name: testversion
  labels: {version: v3}
  trafficPolicy:
    loadBalancer:
      consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}
      zoneAwareLbSetting:
        enabled: true
        failover: [{from: a, to: b}]
        failoverPriority: [x]
        minClusterSize: 6
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
      connectionPool: {tcp: {maxConnections: 1}}
      outlierDetection: {consecutive5xxErrors: 0}
"#;
    let dr: DestinationRuleSpec = spec(yaml).unwrap();
    let p = dr.traffic_policy.as_ref().unwrap();
    let hash = p
        .load_balancer
        .as_ref()
        .unwrap()
        .consistent_hash
        .as_ref()
        .unwrap();
    let cookie = hash.http_cookie.as_ref().unwrap();
    assert_eq!(cookie.ttl.as_deref(), Some("0s"));
    assert_eq!(cookie.attributes[1].value, None);
    assert_eq!(
        hash.ring_hash.as_ref().unwrap().minimum_ring_size,
        Some(2048)
    );
    let locality = p
        .load_balancer
        .as_ref()
        .unwrap()
        .locality_lb_setting
        .as_ref()
        .unwrap();
    assert_eq!(locality.distribute[0].to["us-west/zone2/*"], 20);
    let http = p.connection_pool.as_ref().unwrap().http.as_ref().unwrap();
    assert_eq!(http.http1_max_pending_requests, Some(10));
    assert_eq!(http.http2_max_requests, Some(1000));
    assert_eq!(http.h2_upgrade_policy.as_deref(), Some("UPGRADE"));
    let tcp = p.connection_pool.as_ref().unwrap().tcp.as_ref().unwrap();
    assert_eq!(tcp.tcp_keepalive.as_ref().unwrap().probes, Some(3));
    let od = p.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx_errors, Some(7));
    assert_eq!(od.consecutive_errors, Some(7));
    assert_eq!(od.outlier_detection_http_error_codes, [500, 503]);
    assert_eq!(
        p.tls.as_ref().unwrap().ca_crl.as_deref(),
        Some("/etc/certs/crl.pem")
    );
    assert_eq!(p.tunnel.as_ref().unwrap().target_port, Some(443));
    assert_eq!(p.retry_budget.as_ref().unwrap().percent, Some(25.5));
    let subset = &dr.subsets[0];
    let sp = subset.traffic_policy.as_ref().unwrap();
    let lb = sp.load_balancer.as_ref().unwrap();
    assert_eq!(
        lb.consistent_hash
            .as_ref()
            .unwrap()
            .maglev
            .as_ref()
            .unwrap()
            .table_size,
        Some(65537)
    );
    assert_eq!(
        lb.zone_aware_lb_setting.as_ref().unwrap().min_cluster_size,
        Some(6)
    );
    assert_eq!(
        sp.port_level_settings[0]
            .outlier_detection
            .as_ref()
            .unwrap()
            .consecutive_5xx_errors,
        Some(0)
    );
}

#[test]
fn consecutive_5xx_errors_round_trips() {
    let od: OutlierDetection =
        spec("consecutive5xxErrors: 5\nconsecutiveGatewayErrors: 2\ninterval: 10s\n").unwrap();
    assert_eq!(od.consecutive_5xx_errors, Some(5));
    let json = serde_json::to_value(&od).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 2, "interval": "10s"})
    );
    assert_eq!(
        serde_json::from_value::<OutlierDetection>(json).unwrap(),
        od
    );
    // The snake_case spelling is not the JSON name.
    let err = spec::<OutlierDetection>("consecutive_5xx_errors: 5\n").unwrap_err();
    assert!(err.to_string().contains("consecutive_5xx_errors"), "{err}");
}

#[test]
fn json_names_with_digits() {
    let json = serde_json::to_value(HttpSettings {
        http1_max_pending_requests: Some(1),
        http2_max_requests: Some(2),
        http2_keep_alive: Some(ConnectionKeepalive::default()),
        ..HttpSettings::default()
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"http1MaxPendingRequests": 1, "http2MaxRequests": 2, "http2KeepAlive": {}})
    );
}

#[test]
fn typos_are_rejected() {
    for (yaml, field) in [
        (
            "host: a\ntrafficPolicy: {loadBalancer: {simpel: RANDOM}}\n",
            "simpel",
        ),
        (
            "host: a\nsubsets: [{name: v1, label: {version: v1}}]\n",
            "label",
        ),
        (
            "host: a\ntrafficPolicy: {outlierDetection: {consecutive5XXErrors: 1}}\n",
            "consecutive5XXErrors",
        ),
        (
            "host: a\ntrafficPolicy: {connectionPool: {http: {http1MaxPendingRequest: 1}}}\n",
            "http1MaxPendingRequest",
        ),
        ("host: a\nworkloadSelector: {labels: {app: a}}\n", "labels"),
    ] {
        let err = spec::<DestinationRuleSpec>(yaml).unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}
