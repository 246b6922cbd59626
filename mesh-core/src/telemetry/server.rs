//! Inbound requests: by caller identity and authorization decision (recorded by the
//! authorization layers), and by caller identity and final status with their latency (recorded
//! by the servers' metrics layers).

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    },
};

use serde::Serialize;

use super::request::{LatencyHistogram, RequestMetrics, StatusCount};
use crate::SpiffeId;

/// Most distinct caller identities given their own series; later ones share `other`, so a
/// flood of certificates cannot grow the exposition without bound.
pub const MAX_CALLERS: usize = 256;

/// The label of callers without a verified identity (plaintext).
const NO_IDENTITY: &str = "none";
/// The label of callers beyond [`MAX_CALLERS`].
const OTHER: &str = "other";

/// What the server's authorization said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let through.
    Allow = 0,
    /// Refused (`403` / `PERMISSION_DENIED`).
    Deny = 1,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Counters of inbound requests per caller: authorization decisions, and the final statuses,
/// latency and requests in flight. Recording takes a read lock and a few atomic adds once the
/// caller has been seen.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    callers: RwLock<HashMap<Box<str>, Arc<CallerMetrics>>>,
}

/// One caller's inbound requests: final statuses and latency (the same bounded status set
/// and buckets as the client's, see [`RequestMetrics`]), how many are in flight, and what
/// authorization decided.
#[derive(Debug, Default)]
pub struct CallerMetrics {
    /// Requests by final status, and their latency to the response head.
    pub requests: Arc<RequestMetrics>,
    in_flight: AtomicI64,
    /// By [`Decision`].
    decisions: [AtomicU64; 2],
}

impl CallerMetrics {
    /// A request started; it is in flight until [`finished`](Self::finished).
    pub fn started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// A request (started earlier) ended: its response was sent in full, or abandoned.
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

impl ServerMetrics {
    /// Runs `f` on the entry of `caller` (`None`: plaintext), labelled `none`, by its SPIFFE
    /// ID, or `other` once [`MAX_CALLERS`] identities have their own.
    fn with_caller<R>(&self, caller: Option<&SpiffeId>, f: impl Fn(&Arc<CallerMetrics>) -> R) -> R {
        let label = caller.map_or(NO_IDENTITY, SpiffeId::as_str);
        {
            let map = self.callers.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(label) {
                return f(c);
            }
        }
        let mut map = self.callers.write().unwrap_or_else(|e| e.into_inner());
        let key = if map.len() >= MAX_CALLERS && !map.contains_key(label) {
            OTHER
        } else {
            label
        };
        f(map.entry(key.into()).or_default())
    }

    /// Counts one request from `caller` (`None`: plaintext) that authorization decided.
    pub fn record(&self, caller: Option<&SpiffeId>, decision: Decision) {
        self.with_caller(caller, |c| {
            c.decisions[decision as usize].fetch_add(1, Relaxed);
        });
    }

    /// The inbound metrics of `caller` (`None`: plaintext), for a server's metrics layer.
    pub fn caller(&self, caller: Option<&SpiffeId>) -> Arc<CallerMetrics> {
        self.with_caller(caller, Arc::clone)
    }

    /// Inbound requests by caller, for the callers a metrics layer has seen: statuses,
    /// latency, in flight; sorted by caller.
    pub fn inbound(&self) -> Vec<InboundSnapshot> {
        let map = self.callers.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(caller, m)| InboundSnapshot {
                caller: caller.to_string(),
                requests: m.requests.statuses(),
                latency: m.requests.latency(),
                in_flight: m.in_flight.load(Relaxed).max(0) as u64,
            })
            // Callers only authorization has seen (a server without the metrics layer).
            .filter(|c| c.in_flight > 0 || c.latency.count > 0 || !c.requests.is_empty())
            .collect();
        v.sort_by(|a, b| a.caller.cmp(&b.caller));
        v
    }

    /// The counters, sorted by caller.
    pub fn counts(&self) -> Vec<CallerCount> {
        let map = self.callers.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .flat_map(|(caller, c)| {
                [Decision::Allow, Decision::Deny]
                    .into_iter()
                    .filter_map(|d| {
                        let count = c.decisions[d as usize].load(Relaxed);
                        (count > 0).then(|| CallerCount {
                            caller: caller.to_string(),
                            decision: d.as_str(),
                            count,
                        })
                    })
            })
            .collect();
        v.sort_by(|a, b| (&a.caller, a.decision).cmp(&(&b.caller, b.decision)));
        v
    }
}

/// Inbound requests from one caller with one decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallerCount {
    /// The caller's SPIFFE ID, `none` for plaintext, `other` beyond [`MAX_CALLERS`].
    pub caller: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// How many requests.
    pub count: u64,
}

/// One caller's inbound requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InboundSnapshot {
    /// The caller's SPIFFE ID, `none` for plaintext, `other` beyond [`MAX_CALLERS`].
    pub caller: String,
    /// Requests by final status: HTTP class, gRPC code, or `error` / `cancelled`.
    pub requests: Vec<StatusCount>,
    /// Time from the request's arrival to the response head.
    pub latency: LatencyHistogram,
    /// Requests whose response has not been sent in full yet.
    pub in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_caller_and_caps_the_label_set() {
        let m = ServerMetrics::default();
        let a: SpiffeId = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        m.record(Some(&a), Decision::Allow);
        m.record(Some(&a), Decision::Allow);
        m.record(None, Decision::Deny);
        let c = m.counts();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[0].caller.as_str(), c[0].decision, c[0].count),
            ("none", "deny", 1)
        );
        assert_eq!(c[1].count, 2);
        for i in 0..MAX_CALLERS + 10 {
            let id: SpiffeId = format!("spiffe://cluster.local/ns/default/sa/s{i}")
                .parse()
                .unwrap();
            m.record(Some(&id), Decision::Allow);
        }
        let c = m.counts();
        assert_eq!(c.len(), MAX_CALLERS + 1);
        assert!(c.iter().any(|c| c.caller == "other" && c.count >= 10));
    }

    #[test]
    fn inbound_metrics_per_caller_are_shared_and_capped() {
        use super::super::request::StatusKey;
        let m = ServerMetrics::default();
        let a: SpiffeId = "spiffe://cluster.local/ns/default/sa/a".parse().unwrap();
        let first = m.caller(Some(&a));
        first.started();
        first.requests.count(StatusKey::http(200));
        let again = m.caller(Some(&a));
        assert!(Arc::ptr_eq(&first, &again));
        m.caller(None).requests.count(StatusKey::grpc(14));
        let snap = m.inbound();
        assert_eq!(snap.len(), 2);
        assert_eq!((snap[0].caller.as_str(), snap[0].in_flight), ("none", 0));
        assert_eq!(snap[0].requests[0].status, "UNAVAILABLE");
        assert_eq!((snap[1].in_flight, snap[1].requests[0].count), (1, 1));
        first.finished();
        for i in 0..MAX_CALLERS + 10 {
            let id: SpiffeId = format!("spiffe://cluster.local/ns/default/sa/s{i}")
                .parse()
                .unwrap();
            m.caller(Some(&id)).requests.count(StatusKey::http(200));
        }
        let snap = m.inbound();
        assert_eq!(snap.len(), MAX_CALLERS + 1);
        assert!(snap.iter().any(|c| c.caller == "other"));
    }
}
