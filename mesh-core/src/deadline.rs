//! Request deadlines that travel with the request.
//!
//! A [`Deadline`] is an instant by which the request must be answered. The timeout layer stores
//! it in the request's extensions; layers below (retries, limits) read it to stop early, and
//! outgoing calls made while handling a request inherit it (gRPC's `grpc-timeout`). Setting a
//! deadline never extends one already present: the earlier one wins.
//!
//! **Propagation is task-local.** A server layer (mesh-tonic's `DeadlineLayer`) runs the
//! handler inside [`Deadline::scope`]; every mesh client call made from that task while the
//! handler runs picks the deadline up through [`Deadline::current`], with no application code.
//! Task-local rather than request extensions because the outgoing request is a new request the
//! application builds: nothing of the incoming one reaches it unless the application copies
//! it, which is exactly the leak of platform logic the mesh exists to avoid. The limit: work
//! the handler hands to a *spawned* task leaves the scope (wrap it in `Deadline::scope` too).
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::deadline::Deadline;
//!
//! let mut req = http::Request::new(());
//! Deadline::after(Duration::from_secs(5)).apply(&mut req);
//! Deadline::after(Duration::from_secs(60)).apply(&mut req); // later: ignored
//! let d = Deadline::of(&req).unwrap();
//! assert!(d.remaining() <= Duration::from_secs(5));
//! ```

use std::{
    future::Future,
    time::{Duration, Instant},
};

use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    static CURRENT: Deadline;
}

/// The instant by which a request must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

impl Deadline {
    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        let now = Instant::now();
        Self(
            now.checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        )
    }

    /// A deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Whether it has passed.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.0
    }

    /// The deadline of the incoming request the current task is handling, if a server layer
    /// set one (see the [module docs](self)).
    pub fn current() -> Option<Deadline> {
        CURRENT.try_with(|d| *d).ok()
    }

    /// Runs `fut` with this deadline (or the current one, if earlier) as
    /// [`current`](Self::current).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use std::time::Duration;
    /// use mesh_core::deadline::Deadline;
    ///
    /// let d = Deadline::after(Duration::from_secs(1));
    /// let seen = d.scope(async { Deadline::current() }).await;
    /// assert_eq!(seen, Some(d));
    /// assert_eq!(Deadline::current(), None);
    /// # }
    /// ```
    pub fn scope<F: Future>(self, fut: F) -> TaskLocalFuture<Deadline, F> {
        let effective = match Self::current() {
            Some(outer) if outer <= self => outer,
            _ => self,
        };
        CURRENT.scope(effective, fut)
    }

    /// The request's deadline, if it has one.
    pub fn of<B>(req: &http::Request<B>) -> Option<Deadline> {
        req.extensions().get::<Deadline>().copied()
    }

    /// Stores the earlier of this deadline and the request's current one; returns the
    /// deadline now in force.
    pub fn apply<B>(self, req: &mut http::Request<B>) -> Deadline {
        let effective = match Self::of(req) {
            Some(existing) if existing <= self => existing,
            _ => self,
        };
        req.extensions_mut().insert(effective);
        effective
    }
}

/// When the per-try timeout of one attempt fires: put on each attempt's request by the retry
/// layer (only when the per-try timeout, not the request's deadline, bounds the attempt), read
/// by the balancer. An attempt dropped unanswered at or after this instant timed out on its
/// endpoint, which counts as that endpoint's failure for outlier detection, as Envoy counts a
/// per-try timeout (a 504 it answers on the upstream's behalf); an attempt dropped earlier (the
/// caller gave up, a hedge won) does not count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimeout(tokio::time::Instant);

impl AttemptTimeout {
    /// An attempt whose per-try timeout fires `limit` from now (tokio's clock, which the
    /// timer uses).
    pub fn after(limit: Duration) -> Self {
        Self(tokio::time::Instant::now() + limit)
    }

    /// Whether the timeout has fired.
    pub fn has_fired(&self) -> bool {
        tokio::time::Instant::now() >= self.0
    }
}
