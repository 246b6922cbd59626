//! The `mtls` scenario: plain HTTP, rustls mTLS without a mesh, the mesh with mTLS, and two
//! HAProxy sidecars with mTLS between them.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use mesh::{
    core::{Endpoint, Mesh, discover::StaticSource},
    hyper::MeshClient,
};

use crate::{
    Opts, Variant, backend,
    load::{self, Target},
    report::{Check, Rounds, Row, added_cpu_share, find, rps_ratio},
    scenarios::{no_external, per_run, through},
    sidecar::{Sidecar, envoy::Proto},
    targets,
};

/// `mtls`: plain HTTP, rustls mTLS without a mesh, the mesh with mTLS (client stack + server
/// acceptor and authorization), and the Istio shape through two HAProxy sidecars with mTLS
/// between them.
pub struct Mtls {
    _plain: backend::Backend,
    _raw_tls: crate::tls::RawTlsBackend,
    _sidecars: Vec<Arc<Sidecar>>,
    _pki: crate::tls::Pki,
    pub variants: Vec<Variant>,
}

/// A variant that reports TLS handshakes per 1,000 requests from a counter read before and after
/// the measured run.
fn per_run_handshakes<T: Target>(
    name: &str,
    make: impl Fn() -> (T, Arc<dyn Fn() -> u64 + Send + Sync>) + 'static,
) -> Variant {
    Variant {
        name: name.to_owned(),
        run: Box::new(move |c, warmup, duration| {
            let (target, handshakes) = make();
            let target = Arc::new(target);
            Box::pin(async move {
                load::run(target.clone(), c, warmup, &no_external).await;
                let before = handshakes();
                let mut sample = load::run(target, c, duration, &no_external).await;
                let n = (handshakes() - before) as f64;
                sample.extra.insert(
                    "handshakes_per_1k",
                    n * 1000.0 / sample.requests.max(1) as f64,
                );
                sample
            })
        }),
    }
}

impl Mtls {
    pub async fn new(_opts: &Opts) -> Result<Self, String> {
        let plain = backend::start(Duration::ZERO).await;
        let pki = crate::tls::Pki::new()?;
        let raw_tls = crate::tls::raw_tls_backend(&pki.server).await;
        let mesh_server = crate::tls::mesh_backend(crate::tls::store(&pki.server)).await;
        let haproxy = Arc::new(Sidecar::haproxy_2hop_mtls(plain.addr)?);
        let envoy = Arc::new(Sidecar::envoy_2hop_mtls(plain.addr, Proto::Http1)?);
        let plain_uri = format!("http://{}/", plain.addr);
        let (client_files, raw_tls_addr) = (pki.client.clone(), raw_tls.addr);
        let raw_tls_handshakes = raw_tls.handshakes.clone();
        let mesh_client_files = pki.client.clone();
        let variants = vec![
            per_run(
                "raw",
                move || targets::Raw::new(&plain_uri),
                Arc::new(no_external),
            ),
            per_run_handshakes("raw-tls", move || {
                let h = raw_tls_handshakes.clone();
                (
                    crate::tls::RawTls::new(&client_files, raw_tls_addr),
                    Arc::new(move || h.load(Ordering::Relaxed))
                        as Arc<dyn Fn() -> u64 + Send + Sync>,
                )
            }),
            per_run_handshakes("mesh-mtls", move || {
                let store = crate::tls::store(&mesh_client_files);
                let mesh = Mesh::builder()
                    .service(
                        "bench.backend:8080",
                        StaticSource::new(vec![
                            Endpoint::new(mesh_server).identity(crate::tls::id("reviews")),
                        ])
                        .expect("one endpoint"),
                    )
                    .without_dns_fallback()
                    .build()
                    .expect("valid bench mesh");
                let client = MeshClient::with_settings(
                    mesh,
                    mesh::hyper::ClientSettings {
                        tls: Some(store.clone()),
                        ..Default::default()
                    },
                );
                (
                    targets::Mesh::new(client, "http://bench.backend:8080/"),
                    Arc::new(move || store.handshakes()) as Arc<dyn Fn() -> u64 + Send + Sync>,
                )
            }),
            through("haproxy-2hop-mtls", &haproxy),
            through("envoy-2hop-mtls", &envoy),
        ];
        Ok(Self {
            _plain: plain,
            _raw_tls: raw_tls,
            _sidecars: vec![haproxy, envoy],
            _pki: pki,
            variants,
        })
    }

    pub fn checks(rows: &[Row]) -> Vec<Check> {
        let mut out = Vec::new();
        let (Some(raw), Some(raw_tls), Some(mesh)) = (
            find(rows, "raw", 32),
            find(rows, "raw-tls", 32),
            find(rows, "mesh-mtls", 32),
        ) else {
            return out;
        };
        out.push(rps_ratio(
            "mesh-mtls >= 0.90x raw-tls rps at c32",
            mesh,
            raw_tls,
            0.90,
            3,
            Rounds::Median,
        ));
        // Added CPU per request over plain HTTP: mesh's mTLS (crypto included) against the
        // two-sidecar path's (both sidecar processes plus what they cause in client and backend).
        for (path, limit) in [
            ("envoy-2hop-mtls", 1.0 / 30.0),
            ("haproxy-2hop-mtls", 1.0 / 3.0),
        ] {
            let Some(hop) = find(rows, path, 32) else {
                continue;
            };
            out.push(added_cpu_share(
                format!(
                    "mesh-mtls's added CPU per request <= 1/{:.0} of the {path} path's at c32",
                    1.0 / limit
                ),
                "mesh mTLS",
                &format!("the {path} path"),
                (mesh, raw, hop),
                limit,
            ));
        }
        for c in [1, 32] {
            if let Some(m) = find(rows, "mesh-mtls", c) {
                let h = m
                    .extra
                    .get("handshakes_per_1k")
                    .copied()
                    .unwrap_or(f64::NAN);
                out.push(Check::new(
                    format!("handshakes are not repeated per request (mesh-mtls c{c})"),
                    format!("{h:.3} handshakes per 1,000 requests"),
                    h < 1.0,
                ));
            }
        }
        out
    }
}
