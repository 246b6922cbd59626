//! A mesh discovery subscription drives tower's own balancer (`tower::balance::p2c`) as a
//! `Discover`: endpoints added and removed at runtime are seen by it.

use std::{collections::HashSet, convert::Infallible, net::SocketAddr};

use futures_util::TryStreamExt;
use mesh::core::{
    Endpoint, ServiceName,
    discover::{EndpointSource, StaticSource},
};
use tower::{
    Service, ServiceExt,
    balance::p2c::Balance,
    discover::Change,
    load::{CompleteOnResponse, PendingRequests},
};

#[tokio::test]
async fn subscription_is_a_tower_discover() {
    let addr = |p: u16| SocketAddr::from(([10, 0, 0, 1], p));
    let source = StaticSource::new(vec![Endpoint::new(addr(1)), Endpoint::new(addr(2))]).unwrap();
    let name: ServiceName = "svc:80".parse().unwrap();
    // Each endpoint becomes a service answering with its address, weighed by pending requests.
    let discover = source
        .subscribe(&name)
        .into_discover()
        .map_ok(|change| match change {
            Change::Insert(key, ep) => {
                let a = ep.addr;
                let svc = tower::service_fn(move |_: ()| async move { Ok::<_, Infallible>(a) });
                Change::Insert(
                    key,
                    PendingRequests::new(svc, CompleteOnResponse::default()),
                )
            }
            Change::Remove(key) => Change::Remove(key),
        });
    let mut balance = Balance::new(discover);
    let mut seen = HashSet::new();
    for _ in 0..100 {
        seen.insert(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    assert_eq!(seen, HashSet::from([addr(1), addr(2)]));

    source.update(vec![Endpoint::new(addr(3))]).unwrap();
    let mut last = HashSet::new();
    for _ in 0..50 {
        last.insert(balance.ready().await.unwrap().call(()).await.unwrap());
    }
    assert_eq!(last, HashSet::from([addr(3)]));
}
