//! Calling a service through a shared reference.
//!
//! tower's `Service::call` takes `&mut self`, so a client that serves many tasks clones its
//! whole stack for every request. The layers of mesh's stack keep their state behind `Arc`s
//! and never need `&mut`: they also implement [`SharedService`], and the protocol clients call
//! the top of the stack through it, which saves one clone of every layer per request (measured:
//! about eight contended reference-count updates per request at concurrency 32). Each layer is
//! still an ordinary tower `Service` for use with `ServiceBuilder`.

use std::future::Future;

/// A service callable through `&self`; it must always be ready (mesh's layers shed or queue
/// inside the call instead of applying backpressure through readiness).
pub trait SharedService<Req> {
    /// As `Service::Response`.
    type Response;
    /// As `Service::Error`.
    type Error;
    /// As `Service::Future`.
    type Future: Future<Output = Result<Self::Response, Self::Error>>;

    /// As `Service::call`, without `poll_ready` (always ready).
    fn call_shared(&self, req: Req) -> Self::Future;
}
