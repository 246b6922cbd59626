//! A tonic server behind the mesh's `incoming` under hostile connections: silent TCP clients
//! must not stand in the way of real ones, in any mode.

use std::time::{Duration, Instant};

use mesh::{
    core::{Endpoint, ServiceConfig, tls::ServerTlsMode},
    hyper::{ClientSettings, server::Acceptor},
};
use tokio::io::AsyncReadExt;

use super::{
    common::pki::{Pki, id},
    grpc_with, req, reviews,
    support::{Behaviour, start},
};

#[tokio::test]
async fn silent_connections_do_not_stall_a_tonic_server_in_strict_or_permissive_mode() {
    let pki = Pki::new();
    for mode in [ServerTlsMode::Strict, ServerTlsMode::Permissive] {
        let acceptor = Acceptor::new(Some(pki.store("reviews", "reviews")), mode)
            .unwrap()
            .with_handshake_timeout(Duration::from_millis(800));
        let server = start(Behaviour::named("reviews"), acceptor, None).await;
        // More silent clients than the old hand-over queue had places (256).
        let mut silent = Vec::new();
        for _ in 0..300 {
            silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
        }
        let client = grpc_with(
            vec![Endpoint::new(server.addr).identity(id("reviews"))],
            ServiceConfig::default(),
            ClientSettings {
                tls: Some(pki.store("productpage", "productpage")),
                ..ClientSettings::default()
            },
        );
        let start = Instant::now();
        let reply =
            tokio::time::timeout(Duration::from_secs(5), reviews(&client).get_reviews(req(3)))
                .await
                .unwrap_or_else(|_| panic!("{mode:?}: the call waited behind silent clients"))
                .unwrap();
        assert_eq!(reply.into_inner().product_id, 3);
        assert!(
            start.elapsed() < Duration::from_millis(600),
            "{mode:?}: a valid client waited {:?}",
            start.elapsed()
        );
        // And the silent ones are let go when their time is up.
        let mut buf = [0u8; 1];
        for tcp in &mut silent {
            let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{mode:?}: {read:?}");
        }
    }
}

#[tokio::test]
async fn a_plaintext_tonic_server_lets_silent_clients_go() {
    let acceptor = Acceptor::plaintext().with_handshake_timeout(Duration::from_millis(300));
    let server = start(Behaviour::named("reviews"), acceptor, None).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("a silent client was kept for 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(start.elapsed() >= Duration::from_millis(250));
}
