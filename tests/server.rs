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
                protocol,
                ..ServiceConfig::default()
            },
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    MeshClient::new(mesh)
}

async fn drains_in_flight_requests_then_refuses_connections(protocol: Protocol) {
    let server = gated(Acceptor::plaintext()).await;
    let client = client(server.addr, protocol);
    // A connection that has served a request and is idle, and one request in flight.
    let warm = client.request(get(&format!("http://{SVC}/fast"))).await;
    assert_eq!(warm.unwrap().status(), 200);
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
    let _silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stop.notify_one();
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("a handshake in progress held up the shutdown")
        .unwrap();
}
