//! DNS discovery against a real authoritative DNS server (hickory-server) on loopback: A records
//! re-resolved at their TTL, NXDOMAIN keeping the last good set, SRV records, and the DNS
//! fallback for names the mesh was not told about.

mod common;

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{Backend, backend_at, backend_of, dns::TestDns, eventually, get};
use hickory_proto::rr::RecordType;
use mesh::{
    core::{
        BalanceConfig, LbPolicy, Mesh, ServiceConfig,
        balance::NoEndpointsReason,
        discover::{DnsOptions, DnsResolver, DnsSource, EndpointSource},
    },
    hyper::{Error, MeshClient},
};

fn options() -> DnsOptions {
    DnsOptions {
        min_refresh: Duration::from_millis(200),
        max_refresh: Duration::from_secs(30),
        timeout: Duration::from_secs(2),
    }
}

/// Backends on 127.0.0.1, 127.0.0.2, 127.0.0.3, all on one port (DNS A records carry no port).
async fn three_backends() -> (u16, Vec<Backend>) {
    for _ in 0..20 {
        let first = backend_at("127.0.0.1:0".parse().unwrap(), "ip1")
            .await
            .unwrap();
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in [(2u8, "ip2"), (3, "ip3")] {
            match backend_at(SocketAddr::from(([127, 0, 0, i], port)), name).await {
                Ok(b) => all.push(b),
                Err(_) => break,
            }
        }
        if all.len() == 3 {
            return (port, all);
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

async fn answered_by(
    client: &MeshClient<http_body_util::Empty<bytes::Bytes>>,
    uri: &str,
    n: usize,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let rsp = client.request(get(uri)).await.unwrap();
        seen.insert(backend_of(&rsp));
    }
    seen
}

fn names(v: &[&str]) -> HashSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_records_are_followed_at_their_ttl_and_nxdomain_keeps_the_last_good_set() {
    common::trace();
    let dns = TestDns::start("mesh.test.").await;
    let (port, _backends) = three_backends().await;
    dns.set_a(
        "reviews.mesh.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)],
        1,
    )
    .await;
    let resolver = DnsResolver::with_server(dns.addr, options());
    let source = DnsSource::host(resolver, "reviews.mesh.test.", port);
    let mesh = Mesh::builder()
        .service_with(
            format!("reviews.mesh.test:{port}"),
            source.clone(),
            ServiceConfig {
                destination: mesh::core::DestinationPolicy {
                    balance: BalanceConfig {
                        policy: LbPolicy::RoundRobin,
                        ..BalanceConfig::default()
                    },
                    ..Default::default()
                },
                ..ServiceConfig::default()
            },
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    let client = MeshClient::new(mesh);
    let uri = format!("http://reviews.mesh.test:{port}/");
    assert_eq!(answered_by(&client, &uri, 60).await, names(&["ip1", "ip2"]));

    // The record changes; after its 1 s TTL the client follows.
    dns.set_a("reviews.mesh.test.", &[Ipv4Addr::new(127, 0, 0, 3)], 1)
        .await;
    assert!(
        eventually(Duration::from_secs(10), async || answered_by(
            &client, &uri, 10
        )
        .await
            == names(&["ip3"]))
        .await,
        "the TTL-driven re-resolution never picked up the new record"
    );

    // NXDOMAIN: the error is recorded, the endpoints stay, requests keep working.
    dns.remove("reviews.mesh.test.", RecordType::A).await;
    let sub = source.subscribe(&format!("reviews.mesh.test:{port}").parse().unwrap());
    assert!(
        eventually(Duration::from_secs(10), async || sub
            .snapshot()
            .last_error
            .is_some())
        .await,
        "the NXDOMAIN was never seen"
    );
    let snap = sub.snapshot();
    let err = snap.last_error.unwrap().to_string();
    assert!(
        err.contains("reviews.mesh.test") && err.contains("NXDOMAIN"),
        "{err}"
    );
    assert_eq!(snap.endpoints.unwrap().len(), 1);
    assert_eq!(answered_by(&client, &uri, 30).await, names(&["ip3"]));

    // The name comes back with two addresses.
    dns.set_a(
        "reviews.mesh.test.",
        &[Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 3)],
        1,
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), async || {
            answered_by(&client, &uri, 40).await == names(&["ip1", "ip3"])
        })
        .await
    );
    assert!(sub.snapshot().last_error.is_none());
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_from_the_lowest_priority() {
    let dns = TestDns::start("mesh.test.").await;
    dns.set_a("a.mesh.test.", &[Ipv4Addr::new(127, 0, 0, 1)], 30)
        .await;
    dns.set_a("b.mesh.test.", &[Ipv4Addr::new(127, 0, 0, 2)], 30)
        .await;
    dns.set_srv(
        "_http._tcp.ratings.mesh.test.",
        &[
            (10, 1, 8001, "a.mesh.test."),
            (10, 3, 8002, "b.mesh.test."),
            (20, 5, 8003, "a.mesh.test."),
        ],
        30,
    )
    .await;
    let resolver = DnsResolver::with_server(dns.addr, options());
    let source = DnsSource::srv(resolver, "_http._tcp.ratings.mesh.test.");
    let mut sub = source.subscribe(&"ratings:80".parse().unwrap());
    tokio::time::timeout(Duration::from_secs(10), sub.ready())
        .await
        .unwrap();
    let snap = sub.snapshot();
    assert!(snap.last_error.is_none(), "{:?}", snap.last_error);
    let got: Vec<(SocketAddr, u32)> = snap
        .endpoints
        .unwrap()
        .iter()
        .map(|e| (e.addr, e.weight))
        .collect();
    assert_eq!(
        got,
        vec![
            ("127.0.0.1:8001".parse().unwrap(), 1),
            ("127.0.0.2:8002".parse().unwrap(), 3)
        ]
    );
}

#[tokio::test]
async fn unknown_names_fall_back_to_dns() {
    let dns = TestDns::start("mesh.test.").await;
    let (port, _backends) = three_backends().await;
    dns.set_a("details.mesh.test.", &[Ipv4Addr::new(127, 0, 0, 2)], 30)
        .await;
    let mesh = Mesh::builder()
        .dns(DnsResolver::with_server(dns.addr, options()))
        .build()
        .unwrap();
    let client = MeshClient::new(mesh);
    let rsp = client
        .request(get(&format!("http://details.mesh.test.:{port}/")))
        .await
        .unwrap();
    assert_eq!(backend_of(&rsp), "ip2");

    // A name that does not exist: a fast, typed error that says why.
    let err = client
        .request(get(&format!("http://missing.mesh.test.:{port}/")))
        .await
        .unwrap_err();
    match &err {
        Error::NoEndpoints(e) => {
            assert!(matches!(&e.reason, NoEndpointsReason::Discovery(_)), "{e}");
            assert!(e.to_string().contains("NXDOMAIN"), "{e}");
        }
        other => panic!("expected NoEndpoints, got {other:?}"),
    }
}
