use super::*;
use crate::{discover::StaticSource, endpoint::Endpoint};

#[test]
fn resolves_configured_ip_literal_and_rejects_unknown() {
    let mesh = Mesh::builder()
        .service(
            "a:80",
            StaticSource::new(vec![Endpoint::new("127.0.0.1:1".parse().unwrap())]).unwrap(),
        )
        .without_dns_fallback()
        .build()
        .unwrap();
    assert_eq!(mesh.resolve("A", 80).unwrap().name.as_str(), "a:80");
    let ip = mesh.resolve("127.0.0.1:7000", 80).unwrap();
    let eps = ip.subscription.snapshot().endpoints.unwrap();
    assert_eq!(eps.iter().next().unwrap().addr.port(), 7000);
    assert!(matches!(
        mesh.resolve("b:80", 80),
        Err(ResolveError::Unknown(_))
    ));
    assert!(matches!(
        mesh.resolve("b c", 80),
        Err(ResolveError::Name(_))
    ));
}

#[test]
fn on_demand_sources_nobody_listens_to_are_forgotten() {
    let mesh = Mesh::builder().without_dns_fallback().build().unwrap();
    let cached = || mesh.inner.on_demand.lock().unwrap().len();
    let first = mesh.resolve("127.0.0.1:7001", 80).unwrap();
    assert!(first.on_demand);
    let second = mesh.resolve("127.0.0.1:7002", 80).unwrap();
    assert_eq!(cached(), 2, "both are listened to");
    drop(first);
    let _third = mesh.resolve("127.0.0.1:7003", 80).unwrap();
    assert_eq!(cached(), 2, "the first was forgotten");
    // Still listened to: shared by a second resolution of the same name.
    let again = mesh.resolve("127.0.0.1:7002", 80).unwrap();
    assert_eq!(
        again.subscription.snapshot().endpoints,
        second.subscription.snapshot().endpoints
    );
    assert_eq!(cached(), 2);
}

#[test]
fn rejects_duplicate_and_invalid_names() {
    let s = || StaticSource::new(vec![]).unwrap();
    let dup = Mesh::builder()
        .service("a:80", s())
        .service("A:80", s())
        .build();
    assert!(matches!(dup, Err(BuildError::Duplicate(_))));
    let bad = Mesh::builder().service("a", s()).build();
    assert!(matches!(bad, Err(BuildError::Name(_))));
}
