//! Unit tests of outlier detection.

use super::*;
use crate::classify::FailureKind;

/// A detector over `n` endpoints; returns their healths.
fn outlier(cfg: OutlierDetection, n: usize) -> (Outlier, Vec<Arc<Health>>) {
    let o = Outlier::new("svc:80".parse().unwrap(), Some(cfg), Instant::now());
    let hs: Vec<Arc<Health>> = (0..n).map(|_| Arc::new(Health::new())).collect();
    o.set_table(hs.clone());
    (o, hs)
}

const FAIL: ResponseClass = ResponseClass::Failure(FailureKind::Status(503));
const OK: ResponseClass = ResponseClass::Success;

fn addr() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

#[test]
fn ejects_after_consecutive_failures_and_readmits_after_a_good_probe() {
    let cfg = OutlierDetection {
        success_rate: None,
        base_ejection_time: Duration::from_millis(1),
        ..OutlierDetection::default()
    };
    let (o, hs) = outlier(cfg, 4);
    let h = &hs[0];
    for _ in 0..4 {
        o.record(addr(), h, FAIL, Instant::now());
    }
    assert_eq!(h.state(), HealthState::Active);
    o.record(addr(), h, FAIL, Instant::now());
    assert_eq!(h.state(), HealthState::Ejected);
    assert!(o.any_ejected());
    std::thread::sleep(Duration::from_millis(5));
    let now = o.epoch.elapsed().as_nanos() as u64;
    assert!(h.try_probe(now));
    assert!(!h.try_probe(now), "only one probe");
    o.record(addr(), h, OK, Instant::now());
    assert_eq!(h.state(), HealthState::Active);
    assert!(!o.any_ejected());
}

#[test]
fn failed_probe_doubles_the_ejection() {
    let cfg = OutlierDetection {
        success_rate: None,
        consecutive_failures: Some(1),
        base_ejection_time: Duration::from_secs(10),
        ..OutlierDetection::default()
    };
    let (o, hs) = outlier(cfg, 2);
    let h = &hs[0];
    o.record(addr(), h, FAIL, Instant::now());
    let first = h.ejected_until_ns();
    assert!(first >= 10_000_000_000);
    h.ejected_until_ns.store(0, Relaxed);
    assert!(h.try_probe(1));
    o.record(addr(), h, FAIL, Instant::now());
    assert_eq!(h.state(), HealthState::Ejected);
    let now = o.epoch.elapsed().as_nanos() as u64;
    let second = h.ejected_until_ns() - now;
    assert!(second >= 19_900_000_000, "second ejection {second} ns");
}

#[test]
fn never_ejects_more_than_the_limit() {
    let cfg = OutlierDetection {
        success_rate: None,
        consecutive_failures: Some(1),
        ..OutlierDetection::default()
    };
    let (o, hs) = outlier(cfg, 3);
    for h in &hs {
        o.record(addr(), h, FAIL, Instant::now());
    }
    let ejected = hs.iter().filter(|h| !h.is_active()).count();
    assert_eq!(ejected, 1, "50 % of 3 is 1");
}

#[test]
fn success_rate_ejects_only_outliers() {
    let cfg = OutlierDetection {
        consecutive_failures: None,
        ..OutlierDetection::default()
    };
    // Peers all succeed: the half-failing endpoint is an outlier.
    let (o, hs) = outlier(cfg.clone(), 3);
    for _ in 0..50 {
        o.record(addr(), &hs[1], OK, Instant::now());
        o.record(addr(), &hs[2], OK, Instant::now());
    }
    for i in 0..40 {
        o.record(
            addr(),
            &hs[0],
            if i % 2 == 0 { FAIL } else { OK },
            Instant::now(),
        );
    }
    assert_eq!(hs[0].state(), HealthState::Ejected);

    // Everyone fails alike: nobody is an outlier.
    let (o, hs) = outlier(cfg, 3);
    for i in 0..40 {
        for h in &hs {
            o.record(
                addr(),
                h,
                if i % 2 == 0 { FAIL } else { OK },
                Instant::now(),
            );
        }
    }
    assert!(hs.iter().all(|h| h.state() == HealthState::Active));
}

#[test]
fn validation_names_fields() {
    let c = OutlierDetection {
        max_ejection_percent: 101,
        ..OutlierDetection::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "maxEjectionPercent");
    let c = OutlierDetection {
        success_rate: Some(SuccessRate {
            threshold: 2.0,
            ..SuccessRate::default()
        }),
        ..OutlierDetection::default()
    };
    assert_eq!(c.validate().unwrap_err().field, "successRate.threshold");
}
