//! The mesh's server loop against real clients on loopback: graceful shutdown over HTTP/1.1 and
//! HTTP/2 (requests in flight finish, new connections are refused), and the acceptor's
//! handshake timeout (a client that connects and says nothing is let go, and does not hold up
//! a shutdown).

mod common;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::get;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use mesh::{
    core::{Endpoint, Mesh, Protocol, ServiceConfig, discover::StaticSource, tls::ServerTlsMode},
    hyper::{
        MeshClient,
        server::{Acceptor, serve_with_shutdown},
    },
};
use tokio::{io::AsyncReadExt, sync::Notify, task::JoinHandle};

const SVC: &str = "orders.test:8080";

/// A server whose `/slow` answers once `release` is notified (counting arrivals in `entered`),
/// running until `stop` is notified.
struct Gated {
    addr: SocketAddr,
    release: Arc<Notify>,
    entered: Arc<AtomicUsize>,
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

async fn gated(acceptor: Acceptor) -> Gated {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (release, entered, stop) = (
        Arc::new(Notify::new()),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Notify::new()),
    );
    let (r, e) = (release.clone(), entered.clone());
    let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (release, entered) = (r.clone(), e.clone());
        async move {
            if req.uri().path() == "/slow" {
                entered.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
            }
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
        }
    });
    let s = stop.clone();
    let task = tokio::spawn(serve_with_shutdown(listener, acceptor, svc, async move {
        s.notified().await
    }));
    Gated {
        addr,
        release,
        entered,
        stop,
        task,
    }
}

fn client(addr: SocketAddr, protocol: Protocol) -> MeshClient<Empty<Bytes>> {
    let mesh = Mesh::builder()
        .service_with(
            SVC,
            StaticSource::new(vec![Endpoint::new(addr)]).unwrap(),
            ServiceConfig {
                destination: mesh::core::DestinationPolicy {
                    protocol,
                    ..Default::default()
                },
                ..ServiceConfig::default()
            },
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::new(mesh)
}

/// An HTTP/1.1 connection of its own that has served one request and stays open, idle; the
/// task ends when the server closes it.
async fn idle_connection(addr: SocketAddr) -> JoinHandle<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get("/fast")
        .header(http::header::HOST, "orders.test")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    rsp.into_body().collect().await.unwrap();
    tokio::spawn(async move {
        // Keeps the connection open (dropping the sender would close it from this side).
        let _sender = sender;
        std::future::pending::<()>().await
    });
    task
}

async fn drains_in_flight_requests_then_refuses_connections(protocol: Protocol) {
    let server = gated(Acceptor::plaintext()).await;
    let client = client(server.addr, protocol);
    let idle = idle_connection(server.addr).await;
    let in_flight = tokio::spawn(client.request(get(&format!("http://{SVC}/slow"))));
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            server.entered.load(Ordering::SeqCst) == 1
        })
        .await,
        "the slow request never arrived"
    );

    server.stop.notify_one();
    // New connections are refused once the listener is closed...
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            tokio::net::TcpStream::connect(server.addr).await.is_err()
        })
        .await,
        "still accepting after shutdown"
    );
    // ...the idle connection is closed by the server...
    tokio::time::timeout(Duration::from_secs(5), idle)
        .await
        .expect("the idle connection was not closed")
        .unwrap();
    // ...while the request in flight keeps the server draining, not gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !server.task.is_finished(),
        "the server ended with a request in flight"
    );

    server.release.notify_one();
    let rsp = in_flight
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("the server drained once its last request was answered")
        .unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_http1_requests_in_flight() {
    drains_in_flight_requests_then_refuses_connections(Protocol::Http1).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_http2_streams_in_flight() {
    drains_in_flight_requests_then_refuses_connections(Protocol::Http2).await;
}

#[tokio::test]
async fn silent_clients_are_let_go_and_do_not_hold_up_a_shutdown() {
    let pki = common::pki::Pki::new();
    let acceptor = Acceptor::new(Some(pki.store("orders", "orders")), ServerTlsMode::Strict)
        .unwrap()
        .with_handshake_timeout(Duration::from_millis(300));
    let server = gated(acceptor.clone()).await;

    // Connects, says nothing: closed by the server after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("the server kept a silent connection for 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early"
    );

    // With the default (10 s) timeout, a silent client in its handshake does not hold up a
    // shutdown either.
    let server = gated(acceptor.with_handshake_timeout(Duration::from_secs(10))).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.notify_one();
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("a handshake in progress held up the shutdown")
        .unwrap();
    // Accepted, then let go (a connection never accepted would be reset instead).
    let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
}

#[tokio::test]
async fn a_drain_that_runs_out_of_time_closes_what_is_left() {
    let server = gated(Acceptor::plaintext()).await;
    let client = client(server.addr, Protocol::Http1);
    let in_flight = tokio::spawn(client.request(get(&format!("http://{SVC}/slow"))));
    assert!(
        common::eventually(Duration::from_secs(5), async || {
            server.entered.load(Ordering::SeqCst) == 1
        })
        .await
    );
    server.stop.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The application's bound on the drain ran out: the server's future is dropped.
    server.task.abort();
    let result = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the connection outlived its server")
        .unwrap();
    assert!(result.is_err(), "the request never released got an answer");
}

/// Connects, sends `bytes`, and measures how long the server keeps the connection open.
async fn kept_open_for(addr: SocketAddr, bytes: &[u8]) -> Duration {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    tcp.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await {
            Err(_) => panic!("the server kept a connection that sent {bytes:?} for 5 s"),
            // Closed (possibly after a reply such as HTTP/2's GOAWAY or a 408).
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn silent_and_half_speaking_clients_are_let_go_in_every_mode() {
    let pki = common::pki::Pki::new();
    let timeout = Duration::from_millis(300);
    let acceptors = [
        ("plaintext", Acceptor::plaintext()),
        (
            "PERMISSIVE",
            Acceptor::new(
                Some(pki.store("orders", "orders")),
                ServerTlsMode::Permissive,
            )
            .unwrap(),
        ),
    ];
    let h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for (mode, acceptor) in acceptors {
        let server = gated(acceptor.with_handshake_timeout(timeout)).await;
        let cases: [(&str, &[u8]); 4] = [
            ("nothing", b""),
            ("one byte of the preface", b"P"),
            ("half the HTTP/2 preface", &h2_preface[..10]),
            ("the preface without SETTINGS", h2_preface),
        ];
        for (what, bytes) in cases {
            let open = kept_open_for(server.addr, bytes).await;
            assert!(
                open >= timeout.mul_f32(0.8) && open < Duration::from_secs(3),
                "{mode}, {what}: kept open {open:?}"
            );
        }
        // Real clients are still served over HTTP/1.1 and HTTP/2 (prior knowledge).
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let rsp = client(server.addr, protocol)
                .request(get(&format!("http://{SVC}/fast")))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 200, "{mode} {protocol:?}");
        }
    }
}

#[tokio::test]
async fn hundreds_of_silent_clients_are_closed_while_real_ones_are_served() {
    let server =
        gated(Acceptor::plaintext().with_handshake_timeout(Duration::from_millis(500))).await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let start = Instant::now();
    let client = client(server.addr, Protocol::Http1);
    let rsp = client
        .request(get(&format!("http://{SVC}/fast")))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "{:?}",
        start.elapsed()
    );
    // Every silent one is closed by the server once its time is up.
    let mut buf = [0u8; 1];
    for (i, tcp) in silent.iter_mut().enumerate() {
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "silent client {i}: {read:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    use mesh::hyper::server::{ServerSettings, serve_with_settings};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
    });
    let settings = ServerSettings {
        idle_timeout: Some(Duration::from_millis(400)),
        ..ServerSettings::default()
    };
    let server = tokio::spawn(serve_with_settings(
        listener,
        Acceptor::plaintext(),
        settings,
        svc,
        std::future::pending(),
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // Busy for longer than the idle timeout: requests one after another keep it open.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let req = http::Request::get("http://orders.test/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let rsp = sender.send_request(req).await.unwrap();
        rsp.into_body().collect().await.unwrap();
    }
    assert!(!conn.is_finished(), "closed while in use");
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle HTTP/2 connection stayed open")
        .unwrap()
        .unwrap();
    assert!(
        idle_from.elapsed() >= Duration::from_millis(300),
        "{:?}",
        idle_from.elapsed()
    );
    server.abort();
}

#[tokio::test]
async fn oversize_http2_request_headers_are_refused_once_not_retried() {
    // Over the server's 16 KiB header list limit (DEFAULT_MAX_HEADER_LIST_BYTES): h2 answers
    // 431 and resets the stream with REFUSED_STREAM, which must not read as "never processed,
    // retry anywhere" (the same request is refused everywhere). Far over it: the server closes
    // the connection (GOAWAY ENHANCE_YOUR_CALM), a typed error, not retried either.
    let g = gated(Acceptor::plaintext()).await;
    let c = client(g.addr, Protocol::Http2);
    for (size, expect_431) in [(20_000, true), (100_000, false)] {
        let mut req = get("http://orders.test:8080/");
        req.headers_mut()
            .insert("x-big", "a".repeat(size).parse().unwrap());
        let before = c
            .stats(&SVC.parse().unwrap())
            .map(|s| s.retries)
            .unwrap_or_default();
        let r = c.request(req).await;
        let after = c.stats(&SVC.parse().unwrap()).unwrap().retries;
        match r {
            Ok(rsp) => assert!(
                expect_431 && rsp.status() == 431,
                "{size}: {}",
                rsp.status()
            ),
            Err(e) => assert!(!expect_431, "{size}: {e}"),
        }
        assert_eq!(
            after.retries, before.retries,
            "{size} bytes of headers were retried"
        );
        // The client still serves normal requests (on a new connection if it had to).
        let ok = c.request(get("http://orders.test:8080/")).await.unwrap();
        assert_eq!(ok.status(), 200);
    }
    g.stop.notify_one();
}
