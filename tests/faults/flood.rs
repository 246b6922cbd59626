//! A mesh-hyper server (a child process, PERMISSIVE: TLS and plaintext on one port) flooded
//! with idle connections and slow-loris clients: its file descriptors and memory stay bounded,
//! real clients (plaintext and mTLS) are still served, and the handshake timeout closes the
//! flood.

use std::time::{Duration, Instant};

use mesh::{
    core::{Endpoint, Mesh, discover::StaticSource},
    hyper::{ClientSettings, MeshClient},
};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{
    child::Child,
    common::{
        self,
        pki::{Pki, id},
    },
};

/// The first bytes of a TLS ClientHello: the record header and the handshake header, no more.
const CLIENT_HELLO_START: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
];

async fn open(addr: std::net::SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(addr).await {
            Ok(mut s) => {
                if !first.is_empty() {
                    let _ = s.write_all(first).await;
                }
                out.push(s);
            }
            Err(e) => panic!("connect {}: {e}", out.len()),
        }
    }
    out
}

/// How many of `conns` the server has closed (reads EOF or an error without blocking).
fn closed(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    conns
        .iter()
        .filter(|c| !matches!(c.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_slow_connections_is_bounded_and_real_clients_are_served() {
    let pki = Pki::new();
    let handshake = Duration::from_secs(3);
    let server = Child::spawn_limited(
        "server",
        pki.workload("server", "reviews"),
        10_000,
        handshake,
    );
    let addr = server.addr;
    let plain = MeshClient::<http_body_util::Empty<bytes::Bytes>>::new(
        Mesh::builder()
            .service(
                "plain.test:80",
                StaticSource::new(vec![Endpoint::new(addr)]).unwrap(),
            )
            .without_dns_fallback()
            .build()
            .unwrap(),
    );
    let mtls = MeshClient::<http_body_util::Empty<bytes::Bytes>>::with_settings(
        Mesh::builder()
            .service(
                "mtls.test:80",
                StaticSource::new(vec![Endpoint::new(addr).identity(id("reviews"))]).unwrap(),
            )
            .without_dns_fallback()
            .build()
            .unwrap(),
        ClientSettings {
            tls: Some(pki.store("client", "productpage")),
            ..ClientSettings::default()
        },
    );
    // Warm both clients (their pooled connections are part of the baseline).
    plain
        .request(common::get("http://plain.test/"))
        .await
        .unwrap();
    mtls.request(common::get("http://mtls.test/"))
        .await
        .unwrap();
    let base = server.usage();

    let started = Instant::now();
    let idle = open(addr, 5_000, b"").await;
    let loris_http = open(addr, 100, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    let loris_tls = open(addr, 100, CLIENT_HELLO_START).await;
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak = server.usage();

    // Real clients in the middle of the flood, on new connections too.
    let mut worst = Duration::ZERO;
    for i in 0..50 {
        let t = Instant::now();
        let mut req = common::get(if i % 2 == 0 {
            "http://plain.test/"
        } else {
            "http://mtls.test/"
        });
        req.headers_mut()
            .insert(http::header::CONNECTION, "close".parse().unwrap());
        let client = if i % 2 == 0 { &plain } else { &mtls };
        let rsp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} during the flood: {e}"));
        assert!(rsp.status().is_success());
        worst = worst.max(t.elapsed());
    }

    // The handshake timeout closes every connection that never became a request, and the
    // request-head timeout (set to the same 3 s) the half heads.
    let all: Vec<&[TcpStream]> = vec![&idle, &loris_http, &loris_tls];
    let cleared = common::eventually(handshake + Duration::from_secs(5), async || {
        all.iter().map(|c| closed(c)).sum::<usize>() == 5_200
    })
    .await;
    let closed_after = started.elapsed();
    let after = server.usage();
    let per_conn = (peak.1.saturating_sub(base.1)) as f64 * 1024.0 / 5_200.0;
    println!(
        "flood of 5,000 idle + 100 half-head + 100 half-ClientHello connections (opened in {:.0} ms): \
         server fds {} -> {} -> {}, RSS {} -> {} -> {} KiB ({per_conn:.0} B per connection); \
         worst real request during the flood {:.1} ms; all closed by the handshake and head timeouts after {:.1} s",
        opened.as_secs_f64() * 1e3,
        base.0,
        peak.0,
        after.0,
        base.1,
        peak.1,
        after.1,
        worst.as_secs_f64() * 1e3,
        closed_after.as_secs_f64()
    );
    assert!(cleared, "the flood was not closed by the handshake timeout");
    assert!(
        peak.0 <= base.0 + 5_200 + 50,
        "fds {} -> {}",
        base.0,
        peak.0
    );
    assert!(
        after.0 <= base.0 + 50,
        "fds after the flood {} -> {}",
        base.0,
        after.0
    );
    assert!(
        peak.1 <= base.1 + 100 * 1024,
        "RSS {} -> {} KiB",
        base.1,
        peak.1
    );
    assert!(
        worst < Duration::from_secs(2),
        "a real request took {worst:?} during the flood"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_the_file_descriptors_of_a_flood() {
    let pki = Pki::new();
    let server = Child::spawn_limited(
        "server",
        pki.workload("server", "reviews"),
        1_000,
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = server.usage();
    let conns = open(server.addr, 3_000, b"").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = server.usage();
    let refused = closed(&conns);
    println!(
        "3,000 idle connections against max_connections 1,000: server fds {} -> {}, {refused} closed at once",
        base.0, peak.0
    );
    assert!(
        peak.0 <= base.0 + 1_000 + 20,
        "fds {} -> {}",
        base.0,
        peak.0
    );
    assert!(
        refused >= 1_900,
        "only {refused} of the connections over the limit were closed"
    );
}
