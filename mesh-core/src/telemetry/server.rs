//! Inbound requests by caller identity and authorization decision.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use serde::Serialize;

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

/// Counters of inbound requests per (caller, decision). Recording takes a read lock and one
/// atomic add once the caller has been seen.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    callers: RwLock<HashMap<Box<str>, [AtomicU64; 2]>>,
}

impl ServerMetrics {
    /// Counts one request from `caller` (`None`: plaintext) that authorization decided.
    pub fn record(&self, caller: Option<&SpiffeId>, decision: Decision) {
        let label = caller.map_or(NO_IDENTITY, SpiffeId::as_str);
        {
            let map = self.callers.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = map.get(label) {
                c[decision as usize].fetch_add(1, Relaxed);
                return;
            }
        }
        let mut map = self.callers.write().unwrap_or_else(|e| e.into_inner());
        let key = if map.len() >= MAX_CALLERS && !map.contains_key(label) {
            OTHER
        } else {
            label
        };
        map.entry(key.into()).or_default()[decision as usize].fetch_add(1, Relaxed);
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
                        let count = c[d as usize].load(Relaxed);
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
}
