//! Requests a client could not route to any destination.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::UnroutableCount;

/// Why a request could not be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unroutable {
    /// Neither an absolute URI nor a `Host` header.
    MissingAuthority = 0,
    /// A scheme the client does not speak.
    UnsupportedScheme,
    /// The authority names no known service, or its DNS lookup failed at once.
    Resolve,
    /// The service's policies cannot be applied.
    Policy,
}

impl Unroutable {
    const ALL: [Unroutable; 4] = [
        Self::MissingAuthority,
        Self::UnsupportedScheme,
        Self::Resolve,
        Self::Policy,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::MissingAuthority => "missing_authority",
            Self::UnsupportedScheme => "unsupported_scheme",
            Self::Resolve => "resolve",
            Self::Policy => "policy",
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct UnroutableMetrics {
    counts: [AtomicU64; 4],
}

impl UnroutableMetrics {
    pub(super) fn record(&self, reason: Unroutable) {
        self.counts[reason as usize].fetch_add(1, Relaxed);
    }

    pub(super) fn counts(&self) -> Vec<UnroutableCount> {
        Unroutable::ALL
            .iter()
            .map(|r| UnroutableCount {
                reason: r.as_str(),
                count: self.counts[*r as usize].load(Relaxed),
            })
            .collect()
    }
}
