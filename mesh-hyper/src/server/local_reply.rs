//! Replies the server layers make themselves (denied, rate limited), in HTTP or gRPC form.

use http::{HeaderValue, Response, StatusCode, header::CONTENT_TYPE};

use crate::grpc::{GRPC_MESSAGE, GRPC_STATUS};

/// A local reply: `status` with an empty body to HTTP callers; to gRPC callers an HTTP 200
/// trailers-only response with `grpc-status: grpc_code` and `grpc-message: message`.
pub(crate) fn local_reply<B: Default>(
    grpc: bool,
    status: StatusCode,
    grpc_code: u8,
    message: &str,
) -> Response<B> {
    let mut rsp = Response::new(B::default());
    if grpc {
        let headers = rsp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(&GRPC_STATUS, HeaderValue::from(u16::from(grpc_code)));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            headers.insert(&GRPC_MESSAGE, v);
        }
    } else {
        *rsp.status_mut() = status;
    }
    rsp
}

/// `grpc-message` encoding: printable ASCII except `%` as is, every other byte as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_get_grpc_replies() {
        let rsp: Response<()> = local_reply(true, StatusCode::FORBIDDEN, 7, "denied: 100%");
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "7");
        assert_eq!(rsp.headers()["grpc-message"], "denied: 100%25");
        let rsp: Response<()> = local_reply(false, StatusCode::FORBIDDEN, 7, "denied");
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
    }
}
