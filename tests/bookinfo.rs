//! The Bookinfo demo's scripted scenario (`examples/bookinfo`), with short phases: every phase
//! must keep its promise (even split, 90/10 canary, jason to v2, retries bounded by the
//! timeout under a fault, ≥ 99.9 % through an outage, the rogue caller denied).

#[allow(dead_code)]
#[path = "../examples/bookinfo/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../examples/bookinfo/scenario.rs"]
mod scenario;
#[allow(dead_code)]
#[path = "../examples/bookinfo/services.rs"]
mod services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_of_the_bookinfo_scenario_keeps_its_promise() {
    let (mut cluster, listeners) = cluster::Cluster::prepare(&scenario::base_documents()).unwrap();
    cluster.start(listeners).unwrap();
    let gateway = cluster
        .workload("istio-ingressgateway", None, "gateway")
        .unwrap()
        .http();
    let mut all = Vec::new();
    for phase in scenario::phases() {
        let s = scenario::run_phase(&mut cluster, &gateway, &phase, 3.0, false)
            .await
            .unwrap();
        all.push(s);
    }
    println!("{}", scenario::table(&all));
    let failed: Vec<_> = all
        .iter()
        .flat_map(|s| {
            s.checks
                .iter()
                .filter(|(_, ok)| !ok)
                .map(move |(what, _)| format!("{}: {what}", s.phase))
        })
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|s| !s.checks.is_empty() && s.requests > 0));
}
