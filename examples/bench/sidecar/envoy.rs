//! Envoy bootstraps for the sidecars mesh is measured against and tested with, written the way
//! Istio configures its sidecars where that matters for cost and for interop:
//!
//! - one listener → `http_connection_manager` (codec AUTO: HTTP/1.1 and h2c prior knowledge
//!   alike) → the `router` filter; no access log, no stats sinks, no admin listener;
//! - one STATIC cluster per upstream, an explicit protocol (HTTP/1.1, or HTTP/2 for gRPC),
//!   Envoy's pooled keep-alive connections, circuit breakers opened wide and no retries (as
//!   Istio sets them without a DestinationRule), route timeout 0 (gRPC streams may be long);
//! - mTLS between sidecars as Istio's: TLS 1.3 here, the inbound side requires a client
//!   certificate from the mesh CA with a SPIFFE URI SAN in the trust domain, the outbound side
//!   requires the server's exact SPIFFE ID (`match_typed_subject_alt_names`);
//! - one worker thread (`--concurrency 1`, set by the launcher).
//!
//! Istio's own filters (metadata exchange, stats, authz) are not added, so these sidecars cost
//! less per request than stock Istio ones: the comparison favours Envoy.
//!
//! Pure text generation: the bench (`sidecar::Sidecar::envoy`) and the interop test
//! (`tests/envoy`) write these into a temp dir and start Envoy on them.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf};

/// The protocol of a sidecar's upstream legs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (gRPC-capable): h2c to a plain upstream, ALPN `h2` over mTLS.
    H2,
}

/// A workload's certificate material (PEM files), from the dev CA.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The trust bundle (the CA certificate).
    pub ca: PathBuf,
    /// The workload's certificate chain (a SPIFFE URI SAN).
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// Where a sidecar listens.
#[derive(Clone, Debug)]
pub enum Downstream {
    /// Plain TCP: the app's outbound traffic, as redirected to an Istio outbound listener.
    Plain(SocketAddr),
    /// Istio's inbound side: mTLS, a client certificate required, its URI SAN under
    /// `spiffe://<trust_domain>/`.
    Mtls {
        addr: SocketAddr,
        certs: Certs,
        trust_domain: String,
    },
}

/// Where a sidecar forwards to.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// Plain TCP: the app behind an inbound sidecar, or a plain hop's backend.
    Plain(SocketAddr),
    /// Istio's outbound side to a meshed peer: mTLS with this sidecar's certificate, the peer's
    /// certificate verified against the CA and its URI SAN required to be `server_id`.
    Mtls {
        addr: SocketAddr,
        certs: Certs,
        server_id: String,
        sni: String,
    },
}

/// One sidecar's Envoy bootstrap (YAML): `downstream` → router → `upstream` over `proto`.
pub fn bootstrap(name: &str, downstream: &Downstream, upstream: &Upstream, proto: Proto) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# mesh bench sidecar {name}: written by examples/bench/sidecar/envoy.rs"
    );
    let _ = writeln!(y, "node: {{ id: {name}, cluster: mesh-bench }}");
    // No connection limit, as Istio configures it (stated, so that Envoy does not warn).
    y.push_str(
        "overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 2147483647
static_resources:
  listeners:
",
    );
    let listen = match downstream {
        Downstream::Plain(a) | Downstream::Mtls { addr: a, .. } => *a,
    };
    let _ = writeln!(y, "  - name: {name}_listener");
    let _ = writeln!(y, "    address: {}", socket(listen));
    y.push_str("    filter_chains:\n    - filters:\n");
    y.push_str(&hcm(name));
    if let Downstream::Mtls {
        certs,
        trust_domain,
        ..
    } = downstream
    {
        let _ = write!(
            y,
            "      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}
            alpn_protocols: [\"h2\", \"http/1.1\"]
{certs}            validation_context:
              trusted_ca: {{ filename: \"{ca}\" }}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {{ prefix: \"spiffe://{trust_domain}/\" }}
",
            certs = tls_certificate(certs, 12),
            ca = certs.ca.display(),
        );
    }
    y.push_str("  clusters:\n");
    let up = match upstream {
        Upstream::Plain(a) | Upstream::Mtls { addr: a, .. } => *a,
    };
    let protocol = match proto {
        Proto::Http1 => "http_protocol_options: {}",
        Proto::H2 => "http2_protocol_options: {}",
    };
    let _ = write!(
        y,
        "  - name: {name}_upstream
    type: STATIC
    connect_timeout: 10s
    lb_policy: ROUND_ROBIN
    circuit_breakers:
      thresholds:
      - {{ max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 0 }}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{ idle_timeout: 120s }}
        explicit_http_config:
          {protocol}
    load_assignment:
      cluster_name: {name}_upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {addr} }}
",
        addr = socket(up),
    );
    if let Upstream::Mtls {
        certs,
        server_id,
        sni,
        ..
    } = upstream
    {
        let alpn = match proto {
            Proto::Http1 => "http/1.1",
            Proto::H2 => "h2",
        };
        let _ = write!(
            y,
            "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: \"{sni}\"
        common_tls_context:
          tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}
          alpn_protocols: [\"{alpn}\"]
{certs}          validation_context:
            trusted_ca: {{ filename: \"{ca}\" }}
            match_typed_subject_alt_names:
            - san_type: URI
              matcher: {{ exact: \"{server_id}\" }}
",
            certs = tls_certificate(certs, 10),
            ca = certs.ca.display(),
        );
    }
    y
}

fn socket(a: SocketAddr) -> String {
    format!(
        "{{ socket_address: {{ address: \"{}\", port_value: {} }} }}",
        a.ip(),
        a.port()
    )
}

fn tls_certificate(c: &Certs, indent: usize) -> String {
    let pad = " ".repeat(indent);
    format!(
        "{pad}tls_certificates:\n{pad}- certificate_chain: {{ filename: \"{}\" }}\n{pad}  private_key: {{ filename: \"{}\" }}\n",
        c.cert.display(),
        c.key.display()
    )
}

/// The listener's `http_connection_manager` → router, as a filter list item.
fn hcm(name: &str) -> String {
    format!(
        "      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          common_http_protocol_options: {{ idle_timeout: 120s }}
          route_config:
            name: {name}
            virtual_hosts:
            - name: {name}
              domains: [\"*\"]
              routes:
              - match: {{ prefix: \"/\" }}
                route: {{ cluster: {name}_upstream, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"
    )
}

/// The command-line arguments of one sidecar Envoy on `config`: one worker, no hot restart (as
/// Istio's pilot-agent starts it, so that several run side by side), warnings only.
pub fn args(config: &std::path::Path) -> Vec<String> {
    [
        "-c",
        &config.display().to_string(),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "-l",
        "warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
