//! The Bookinfo demo's scripted scenario (`examples/bookinfo`), with short phases: every phase
//! must keep its promise (even split, 90/10 canary, jason to v2, retries bounded by the
//! timeout under a fault, ≥ 99.9 % through an outage, the rogue caller denied).

#[allow(dead_code)]
#[path = "../examples/bookinfo/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../examples/bookinfo/registry.rs"]
mod registry;
#[allow(dead_code)]
#[path = "../examples/bookinfo/scenario.rs"]
mod scenario;
#[allow(dead_code)]
#[path = "../examples/bookinfo/services.rs"]
mod services;

#[cfg(feature = "etcd")]
#[allow(dead_code)]
#[path = "etcd/server.rs"]
mod etcd_server;

/// One scenario at a time: two Bookinfos on two cores would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scenario(etcd: Option<&str>) {
    let _one = ONE_AT_A_TIME.lock().await;
    let (mut cluster, listeners) = cluster::Cluster::prepare(&scenario::base_documents(), etcd)
        .await
        .unwrap();
    cluster.start(listeners).await.unwrap();
    let gateway = cluster
        .workload("istio-ingressgateway", None, "gateway")
        .await
        .unwrap()
        .http();
    let mut all = Vec::new();
    for phase in scenario::phases() {
        let s = scenario::run_phase(&mut cluster, &gateway, &phase, 3.0, false)
            .await
            .unwrap();
        all.push(s);
    }
    println!("{}{}", cluster.registry.describe(), scenario::table(&all));
    let failed: Vec<_> = all
        .iter()
        .flat_map(|s| {
            s.checks.iter().filter(|(_, ok)| !ok).map(move |(what, _)| {
                format!("{}: {what} (first failure: {:?})", s.phase, s.first_error)
            })
        })
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|s| !s.checks.is_empty() && s.requests > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_of_the_bookinfo_scenario_keeps_its_promise() {
    scenario(None).await;
}

/// The same with etcd as registry (instances register under leases) and config store (phases
/// go through `mesh apply`).
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_keeps_its_promise_with_etcd_as_registry_and_config_store() {
    let Some(etcd) = etcd_server::Etcd::start().await else {
        return;
    };
    scenario(Some(&format!("etcd://127.0.0.1:{}", etcd.client_port))).await;
}
