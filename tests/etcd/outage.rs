//! etcd outages the watch must survive exactly, and etcd behind TLS with authentication.

use std::{collections::BTreeSet, time::Duration};

use mesh::etcd::{
    EndpointRecord, EtcdOptions, EtcdRegistry, Registration, etcd_client, record_key,
};

use super::{
    SERVICES,
    common::{eventually, pki::Pki},
    name,
    server::{Etcd, Proxy},
};

fn addrs(reg: &EtcdRegistry) -> BTreeSet<String> {
    reg.endpoints(&name())
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

async fn put(c: &mut etcd_client::Client, instance: &str, addr: &str) -> i64 {
    let record = EndpointRecord::new(addr.parse().unwrap());
    let r = c
        .put(
            record_key(SERVICES, &name(), instance),
            serde_json::to_vec(&record).unwrap(),
            None,
        )
        .await
        .unwrap();
    r.header().unwrap().revision()
}

#[tokio::test]
async fn etcd_a_compaction_during_an_outage_makes_the_watch_list_again() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut direct = etcd.options().connect().await.unwrap();
    put(&mut direct, "a", "10.0.0.1:9080").await;
    put(&mut direct, "b", "10.0.0.2:9080").await;
    // The registry reaches etcd through a proxy the test cuts.
    let proxy = Proxy::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    let mut options = EtcdOptions::new([format!("http://{}", proxy.addr)]);
    options.backoff_max = Duration::from_millis(500);
    let reg = EtcdRegistry::connect(&options, SERVICES).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || addrs(&reg).len() == 2).await);
    let before = reg.remote_state();
    assert_eq!(before.relists, 1, "{before:?}");

    proxy.cut();
    assert!(
        eventually(Duration::from_secs(20), async || !reg
            .remote_state()
            .connected)
        .await,
        "the registry never noticed the partition: {:?}",
        reg.remote_state()
    );
    // Meanwhile: a goes, c and d come, and the history of all of it is compacted away.
    direct
        .delete(record_key(SERVICES, &name(), "a"), None)
        .await
        .unwrap();
    put(&mut direct, "c", "10.0.0.3:9080").await;
    let rev = put(&mut direct, "d", "10.0.0.4:9080").await;
    direct
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .unwrap();
    // The last good set stays through the partition.
    assert_eq!(addrs(&reg).len(), 2);

    proxy.restore();
    let want: BTreeSet<String> = ["10.0.0.2:9080", "10.0.0.3:9080", "10.0.0.4:9080"]
        .map(String::from)
        .into();
    assert!(
        eventually(Duration::from_secs(20), async || addrs(&reg) == want).await,
        "after the compaction: {:?}, {:?}",
        addrs(&reg),
        reg.remote_state()
    );
    let after = reg.remote_state();
    println!("compaction during a partition: {before:?} -> {after:?}");
    assert!(after.connected && after.relists == 2, "{after:?}");
    assert!(after.reconnects >= 1 && after.revision >= rev, "{after:?}");
}

#[tokio::test]
async fn etcd_over_tls_with_authentication_registers_and_discovers() {
    let pki = Pki::new();
    let files = pki.workload("etcd", "etcd");
    let Some(etcd) = Etcd::start_tls(
        files.cert_chain.clone(),
        files.key.clone(),
        files.trust_bundle.clone(),
    )
    .await
    else {
        return;
    };
    etcd.enable_auth("s3cret").await;
    let options = etcd.options();
    assert!(
        options.display().starts_with("etcds://"),
        "{}",
        options.display()
    );

    // Without the password, or without trusting the CA, nothing is read.
    let anonymous = EtcdOptions::new([etcd.url()]).with_tls(mesh::etcd::EtcdTls {
        ca: files.trust_bundle.clone(),
        client: None,
        domain: Some("localhost".into()),
    });
    let refused = EtcdRegistry::connect_authoritative(&anonymous, SERVICES).await;
    assert!(refused.is_err(), "an anonymous client listed the registry");
    let wrong = options.clone().with_user("root", "guess");
    assert!(
        EtcdRegistry::connect_authoritative(&wrong, SERVICES)
            .await
            .is_err()
    );
    let untrusted = EtcdOptions::new([etcd.url()])
        .with_user("root", "s3cret")
        .with_tls(mesh::etcd::EtcdTls {
            ca: Pki::named("another CA").bundle(),
            client: None,
            domain: Some("localhost".into()),
        });
    assert!(
        EtcdRegistry::connect_authoritative(&untrusted, SERVICES)
            .await
            .is_err()
    );

    let reg = EtcdRegistry::connect(&options, SERVICES).await.unwrap();
    let me = Registration::register(
        &options,
        SERVICES,
        &name(),
        "tls-0",
        EndpointRecord::new("10.0.0.9:9080".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || addrs(&reg)
            .contains("10.0.0.9:9080"))
        .await
    );
    me.withdraw().await;
    assert!(eventually(Duration::from_secs(10), async || addrs(&reg).is_empty()).await);
    println!("etcd over TLS with auth: {:?}", reg.remote_state());
}
