//! Dropping destinations resolved on demand once they fall idle.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::{Dest, Dialect, Inner, MeshClient, RequestBody};

impl<B, D> MeshClient<B, D>
where
    B: RequestBody,
    D: Dialect,
{
    /// Starts the task that drops idle on-demand destinations (once; it ends with the client).
    pub(super) fn start_sweeping(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(timeout) = self.inner.settings.destination_idle_timeout else {
            return;
        };
        if self.inner.sweeping.swap(true, Relaxed) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime nothing can run later: try again with the next destination.
            self.inner.sweeping.store(false, Relaxed);
            return;
        };
        let period = (timeout / 2).max(Duration::from_millis(10));
        let inner = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            // Dropped with the task (the client went away, or its runtime shut down): the next
            // on-demand destination starts sweeping again, on its own runtime.
            struct Sweeping<B, D>(std::sync::Weak<Inner<B, D>>);
            impl<B, D> Drop for Sweeping<B, D> {
                fn drop(&mut self) {
                    if let Some(inner) = self.0.upgrade() {
                        inner.sweeping.store(false, Relaxed);
                    }
                }
            }
            let sweeping = Sweeping(inner);
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = sweeping.0.upgrade() else {
                    return;
                };
                inner.sweep();
            }
        });
    }
}

impl<B: RequestBody, D: Dialect> Inner<B, D> {
    /// One pass of the idle sweep: an on-demand destination that no request used during two
    /// whole passes in a row (at least the idle timeout), with nothing in flight and no handle
    /// on it outside the client's maps, is dropped.
    pub(super) fn sweep(&self) {
        let mut by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let by_authority = self.by_authority.load();
        // The maps' own references to each destination: by name, and per authority spelling.
        let mut refs: HashMap<*const Dest<B, D>, usize> = HashMap::new();
        for d in by_authority.values() {
            *refs.entry(Arc::as_ptr(d)).or_insert(1) += 1;
        }
        let before = by_name.len();
        by_name.retain(|name, dest| {
            if !dest.on_demand {
                return true;
            }
            // More references than the maps' are `Target`s (or a request between resolving a
            // new authority and routing it); requests already routed hold the stack, not the
            // destination, and show as in flight until their response head.
            let held = Arc::strong_count(dest) > refs.get(&Arc::as_ptr(dest)).copied().unwrap_or(1);
            if held || dest.in_flight() > 0 {
                // Busy: the idle time starts when it no longer is.
                dest.touch();
                return true;
            }
            if !dest.idle_for_two_sweeps() {
                return true;
            }
            tracing::debug!(service = %name, "idle destination dropped");
            false
        });
        if by_name.len() == before {
            return;
        }
        let mut map = HashMap::clone(&by_authority);
        map.retain(|_, d| {
            by_name
                .get(&d.name)
                .is_some_and(|kept| Arc::ptr_eq(kept, d))
        });
        self.by_authority.store(Arc::new(map));
    }
}
