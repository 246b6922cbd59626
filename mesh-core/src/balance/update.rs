//! Applying a discovery snapshot: the next generation of a balancer's table.

use std::{sync::Arc, time::Instant};

use super::{
    NewEndpoint, Shared,
    ewma::{PeakEwma, nanos_since},
    table::{Slot, Table},
};
use crate::{discover::Snapshot, outlier::Health};

impl<S: Clone, C> Shared<S, C> {
    /// Applies a discovery snapshot: a new table that keeps the slots (pools, load) of
    /// endpoints that did not change.
    pub(super) fn apply(&self, snap: &Snapshot, new_endpoint: &impl NewEndpoint<S>) {
        let Some(set) = &snap.endpoints else {
            return; // discovery has not answered yet
        };
        let old = self.table.load();
        let now = nanos_since(self.epoch, Instant::now());
        let mut slots = Vec::with_capacity(set.len());
        for ep in set {
            let prev = old
                .slots
                .binary_search_by_key(&ep.addr, |s| s.endpoint.addr)
                .ok()
                .map(|i| &old.slots[i]);
            match prev {
                Some(p) if p.endpoint == *ep => slots.push(p.clone()),
                Some(p) => {
                    tracing::debug!(service = %self.service, endpoint = %ep.addr,
                        weight = ep.weight, labels = ?ep.labels, "endpoint updated");
                    // Same address, new metadata: keep the pool unless the identity it must
                    // verify changed, and keep the load either way.
                    let service = if p.endpoint.identity == ep.identity {
                        p.service.clone()
                    } else {
                        new_endpoint.new_endpoint(ep)
                    };
                    slots.push(Arc::new(Slot {
                        endpoint: ep.clone(),
                        service,
                        load: p.load.clone(),
                        health: p.health.clone(),
                        outlier: self.outlier.clone(),
                    }));
                }
                None => {
                    tracing::debug!(service = %self.service, endpoint = %ep.addr,
                        weight = ep.weight, labels = ?ep.labels, "endpoint added");
                    let load = PeakEwma::new(now);
                    slots.push(Arc::new(Slot {
                        endpoint: ep.clone(),
                        service: new_endpoint.new_endpoint(ep),
                        load: Arc::new(load),
                        health: Arc::new(Health::new()),
                        outlier: self.outlier.clone(),
                    }));
                }
            }
        }
        for gone in old
            .slots
            .iter()
            .filter(|s| set.get(&s.endpoint.addr).is_none())
        {
            tracing::debug!(service = %self.service, endpoint = %gone.endpoint.addr,
                in_flight = gone.load.in_flight(), "endpoint removed");
            self.outlier.forget(&gone.health);
        }
        self.outlier
            .set_table(slots.iter().map(|s| s.health.clone()).collect());
        if slots.is_empty() {
            tracing::debug!(service = %self.service, error = ?snap.last_error, "service has no endpoints");
        }
        let table = Table::new(
            slots,
            &self.picker,
            self.min_ring_size,
            snap.last_error.clone(),
            snap.unhealthy,
        );
        self.table.store(Arc::new(table));
        self.updated.notify_waiters();
    }
}
