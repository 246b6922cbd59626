//! gRPC as far as HTTP layers need to know it: telling gRPC calls apart, and reading their
//! status off response headers or trailers. mesh-tonic builds on these (and re-exports them
//! from `mesh_tonic::status`); mesh-hyper's server layers use them to answer and count gRPC
//! calls correctly.
//!
//! ```
//! use mesh_hyper::grpc::{code_from_http, grpc_status_of, is_grpc};
//!
//! let req = http::Request::post("/bookinfo.Reviews/GetReviews")
//!     .header("content-type", "application/grpc+proto").body(()).unwrap();
//! assert!(is_grpc(req.headers()));
//! let rsp = http::Response::builder().header("grpc-status", "14").body(()).unwrap();
//! assert_eq!(grpc_status_of(rsp.headers()), Some(14));
//! assert_eq!(code_from_http(http::StatusCode::SERVICE_UNAVAILABLE), 14);
//! ```

use http::{HeaderMap, HeaderName, header::CONTENT_TYPE};
use http_body::Frame;
use mesh_core::telemetry::{ErrorKind, StatusKey};

/// The `grpc-status` header.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The `grpc-message` header.
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a request is a gRPC call (`content-type: application/grpc` or `application/grpc+...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc").is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('+') || rest.starts_with(';')
            })
        })
}

/// The `grpc-status` in a header map (response headers of a trailers-only response, or
/// trailers), if present. An unparsable or out-of-range value reads as `UNKNOWN` (2).
pub fn grpc_status_of(headers: &HeaderMap) -> Option<u16> {
    let v = headers.get(&GRPC_STATUS)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|c| *c <= 16)
            .unwrap_or(2),
    )
}

/// The final status a frame of a gRPC response body decides, as a metrics key: the
/// trailers' `grpc-status` (`UNKNOWN` when they lack one); an error when the body failed or
/// ended without the trailers gRPC requires; `None` for a data frame (not decided yet).
pub fn status_of_frame<D, E>(frame: &Option<Result<Frame<D>, E>>) -> Option<StatusKey> {
    match frame {
        Some(Ok(f)) => f
            .trailers_ref()
            .map(|t| StatusKey::grpc(grpc_status_of(t).unwrap_or(2))),
        Some(Err(_)) | None => Some(StatusKey::error(ErrorKind::Other)),
    }
}

/// The gRPC code a non-200 HTTP status stands for, per gRPC's "HTTP to gRPC Status Code
/// Mapping" (for responses from something that is not a gRPC server, such as a proxy).
pub fn code_from_http(status: http::StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn grpc_content_types_and_statuses() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpcx"));
        assert!(!is_grpc(&h));
        assert_eq!(grpc_status_of(&h), None);
        h.insert(&GRPC_STATUS, HeaderValue::from_static("99"));
        assert_eq!(grpc_status_of(&h), Some(2));
        h.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(grpc_status_of(&h), Some(0));
    }

    #[test]
    fn http_statuses_map_as_grpc_specifies() {
        assert_eq!(code_from_http(http::StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(code_from_http(http::StatusCode::FORBIDDEN), 7);
        assert_eq!(code_from_http(http::StatusCode::IM_A_TEAPOT), 2);
    }
}
