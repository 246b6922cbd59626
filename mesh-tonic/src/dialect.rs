//! gRPC as the meshed client speaks it: classification by `grpc-status`, HTTP/2 only,
//! `grpc-timeout` on every attempt, `grpc.health.v1` health checks.
//!
//! | result | class |
//! |---|---|
//! | `grpc-status: 0` in the response headers | success |
//! | `grpc-status: N` (N ≠ 0) in the response headers (trailers-only response) | `Failure(Grpc(N))`, final |
//! | HTTP 200 without `grpc-status` (a normal response: the status comes in the trailers) | success *for now*: a [`LateOutcome`] (the balancer's and the breaker's, joined) is handed to the response body, which reports the trailers' status to outlier ejection and the service breaker |
//! | another HTTP status | `Failure(Grpc(code))` with gRPC's HTTP-to-gRPC mapping (503 → `UNAVAILABLE`) |
//! | the connection closed or reset before the response head | `Failure(Grpc(14))`: `UNAVAILABLE`, as gRPC clients report a lost transport, so that gRPC's retry policy (`UNAVAILABLE` by default) retries it |
//! | the per-try timeout fired | `Failure(Grpc(4))`: `DEADLINE_EXCEEDED`, retried when the policy lists it (`retryOn: deadline-exceeded`; gRPC calls are POSTs, so the idempotent-only per-try rule of HTTP does not apply) |
//! | other transport errors | as mesh-hyper classifies them (connect failure, refused stream, ...) |
//!
//! Retries decide on the response head, as gRPC's retry design does: once response headers
//! (or a message) have arrived, the call is committed. Which `Grpc(N)` failures count against
//! the endpoint is decided in mesh-core ([`FailureKind::is_endpoint_fault`]): `UNAVAILABLE` and
//! `INTERNAL` do, `INVALID_ARGUMENT` does not.
//!
//! [`FailureKind::is_endpoint_fault`]: mesh_core::classify::FailureKind::is_endpoint_fault

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use mesh_core::{
    Protocol,
    classify::{Classify, FailureKind, LateOutcome, ResponseClass, ServedBy},
    deadline::Deadline,
    discover::health::{CheckKind, HealthProbe},
    telemetry::StatusKey,
    timeout::TimeoutKind,
};
use mesh_hyper::{
    Error, HttpClassifier,
    client::{Dialect, EndpointTarget},
};

use crate::{
    grpc_timeout,
    health::GrpcProbe,
    status::{GRPC_STATUS, code_from_http, grpc_status_of},
};

/// gRPC's `UNAVAILABLE`.
const UNAVAILABLE: u16 = 14;
/// gRPC's `DEADLINE_EXCEEDED`.
const DEADLINE_EXCEEDED: u16 = 4;

/// The gRPC [`Dialect`] of the meshed client (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct Grpc;

impl Classify<Response<Incoming>, Error> for Grpc {
    fn classify(&self, result: Result<&Response<Incoming>, &Error>) -> ResponseClass {
        match result {
            Ok(rsp) => head_class(rsp),
            // An attempt that ran out of its per-try time is what a gRPC client reports as
            // DEADLINE_EXCEEDED: retried when the policy lists it (`retryOn: deadline-exceeded`).
            Err(Error::TimedOut(t)) if t.kind == TimeoutKind::PerTry => {
                ResponseClass::Failure(FailureKind::Grpc(DEADLINE_EXCEEDED))
            }
            Err(e) => match HttpClassifier.classify(Err::<&Response<Incoming>, _>(e)) {
                ResponseClass::Failure(FailureKind::Reset) => {
                    ResponseClass::Failure(FailureKind::Grpc(UNAVAILABLE))
                }
                class => class,
            },
        }
    }

    fn endpoint(&self, result: Result<&Response<Incoming>, &Error>) -> Option<SocketAddr> {
        match result {
            Ok(rsp) => rsp.extensions().get::<ServedBy>().map(|s| s.0),
            Err(e) => e.endpoint(),
        }
    }

    fn defer_outcome(
        &self,
        rsp: &mut Response<Incoming>,
        outcome: &mut dyn FnMut() -> LateOutcome,
    ) -> bool {
        if rsp.status() != StatusCode::OK || rsp.headers().contains_key(&GRPC_STATUS) {
            return false;
        }
        outcome().attach(rsp.extensions_mut());
        true
    }
}

/// The class a response head decides.
fn head_class<B>(rsp: &Response<B>) -> ResponseClass {
    if rsp.status() != StatusCode::OK {
        return ResponseClass::Failure(FailureKind::Grpc(code_from_http(rsp.status())));
    }
    match grpc_status_of(rsp.headers()) {
        None | Some(0) => ResponseClass::Success,
        Some(code) => ResponseClass::Failure(FailureKind::Grpc(code)),
    }
}

impl Dialect for Grpc {
    fn protocol(&self, _configured: Protocol) -> Protocol {
        Protocol::Http2
    }

    fn before_send<B>(&self, req: &mut Request<B>) {
        // The time left, measured now: what the server gets for this attempt.
        if let Some(deadline) = Deadline::of(req) {
            let value = grpc_timeout::encode(deadline.remaining());
            if let Ok(mut v) = HeaderValue::from_str(&value) {
                // Different on every call: kept out of HPACK's dynamic table.
                mesh_hyper::client::no_hpack_indexing(&mut v);
                req.headers_mut()
                    .insert(&grpc_timeout::GRPC_TIMEOUT_HEADER, v);
            }
        }
    }

    fn marks_endpoint(&self, rsp: &Response<Incoming>) -> bool {
        head_class(rsp).is_failure()
    }

    /// A trailers-only response or a non-200 head decide the call's code now; a normal
    /// response's code comes in the trailers (the channel's response body counts it).
    fn telemetry_status(&self, rsp: &Response<Incoming>) -> Option<StatusKey> {
        if rsp.status() != StatusCode::OK {
            return Some(StatusKey::grpc(code_from_http(rsp.status())));
        }
        grpc_status_of(rsp.headers()).map(StatusKey::grpc)
    }

    fn supports_health_check(&self, _kind: &CheckKind) -> bool {
        true
    }

    fn health_probe(&self, kind: &CheckKind, target: &EndpointTarget) -> Box<dyn HealthProbe> {
        match kind {
            CheckKind::Grpc(check) => Box::new(GrpcProbe::new(target, &check.service)),
            CheckKind::Http(_) => HttpClassifier.health_probe(kind, target),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(status: u16, grpc: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header("grpc-status", g);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn grpc_timeout_is_set_per_attempt_and_kept_out_of_hpack_tables() {
        let mut req = http::Request::new(());
        Deadline::after(std::time::Duration::from_secs(2)).apply(&mut req);
        Grpc.before_send(&mut req);
        let v = &req.headers()[&grpc_timeout::GRPC_TIMEOUT_HEADER];
        assert!(
            v.is_sensitive(),
            "a per-call value must not be HPACK-indexed"
        );
        let left = grpc_timeout::decode(v.to_str().unwrap()).unwrap();
        assert!(
            left <= std::time::Duration::from_secs(2) && left > std::time::Duration::from_secs(1)
        );
    }

    #[test]
    fn response_heads_classify_by_grpc_status() {
        assert_eq!(head_class(&rsp(200, None)), ResponseClass::Success);
        assert_eq!(head_class(&rsp(200, Some("0"))), ResponseClass::Success);
        assert_eq!(
            head_class(&rsp(200, Some("14"))),
            ResponseClass::Failure(FailureKind::Grpc(14))
        );
        assert_eq!(
            head_class(&rsp(503, None)),
            ResponseClass::Failure(FailureKind::Grpc(14))
        );
        assert!(!FailureKind::Grpc(3).is_endpoint_fault());
        assert!(FailureKind::Grpc(14).is_endpoint_fault());
    }
}
