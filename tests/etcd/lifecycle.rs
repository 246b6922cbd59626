//! Registrations over their lifetime: a killed instance, a lost lease; a large registry.

use std::time::{Duration, Instant};

use mesh::{
    core::ServiceName,
    etcd::{EndpointRecord, Registration},
};

use crate::common::backend;
use crate::{SERVICES, common::eventually, name, register, registry, server::Etcd};

#[tokio::test]
async fn etcd_10k_records_load_within_a_second() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut raw = etcd.options().connect().await.unwrap();
    for chunk in 0..100u32 {
        let ops: Vec<_> = (0..100u32)
            .map(|i| {
                let n = chunk * 100 + i;
                let value = format!(
                    "{{\"address\":\"127.{}.{}.{}\",\"port\":9080,\"labels\":{{\"version\":\"v{}\"}}}}",
                    n / 65536 % 256,
                    n / 256 % 256,
                    n % 256,
                    n % 3
                );
                mesh::etcd::etcd_client::TxnOp::put(
                    format!("/mesh/services/big.default:9080/i{n}"),
                    value,
                    None,
                )
            })
            .collect();
        raw.txn(mesh::etcd::etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
    }
    let t = Instant::now();
    let reg = registry(&etcd).await;
    let took = t.elapsed();
    let big: ServiceName = "big.default:9080".parse().unwrap();
    assert_eq!(reg.endpoints(&big).len(), 10_000);
    println!(
        "10,000 records listed and loaded in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
}

/// The child process of `etcd_killed_instance_vanishes_after_its_lease_ttl`: registers and
/// waits to be killed.
#[tokio::test]
#[ignore = "run as a child process by etcd_killed_instance_vanishes_after_its_lease_ttl"]
async fn etcd_child_registers_and_waits() {
    let Ok(url) = std::env::var("MESH_ETCD_CHILD") else {
        return;
    };
    let options = mesh::etcd::EtcdOptions::new([url]);
    let _r = Registration::register(
        &options,
        SERVICES,
        &name(),
        "child",
        EndpointRecord::new("127.0.0.1:9".parse().unwrap()),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn etcd_killed_instance_vanishes_after_its_lease_ttl() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let reg = registry(&etcd).await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lifecycle::etcd_child_registers_and_waits",
            "--ignored",
            "--nocapture",
        ])
        .env("MESH_ETCD_CHILD", etcd.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(20), async || {
        reg.endpoints(&name()).len() == 1
    })
    .await;
    if !up {
        let _ = child.kill();
        panic!("the child never registered");
    }
    let killed = Instant::now();
    let _ = child.kill(); // SIGKILL, by pid
    let _ = child.wait();
    assert!(
        eventually(Duration::from_secs(10), async || reg
            .endpoints(&name())
            .is_empty())
        .await
    );
    let gone = killed.elapsed();
    println!(
        "a killed instance (TTL 2 s) vanished after {:.2} s",
        gone.as_secs_f64()
    );
    assert!(gone <= Duration::from_secs(5), "{gone:?}");
}

#[tokio::test]
async fn etcd_lost_lease_is_granted_again_and_the_record_rewritten() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let v1 = backend("v1").await;
    let r = register(&etcd, &v1, 3).await;
    let reg = registry(&etcd).await;
    let lease = r.lease();
    // The lease is revoked behind the registration's back (as if it had expired).
    let mut raw = etcd.options().connect().await.unwrap();
    raw.lease_revoke(lease).await.unwrap();
    assert!(eventually(Duration::from_secs(10), async || r.regrants() == 1).await);
    assert_ne!(r.lease(), lease);
    assert!(
        eventually(Duration::from_secs(5), async || reg
            .endpoints(&name())
            .len()
            == 1)
        .await
    );
}
