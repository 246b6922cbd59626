//! HAProxy configurations for the lean sidecar rows: an HTTP/1.1 keep-alive hop with pooled
//! upstream connections (`http-reuse always`, as Envoy pools), one thread, no logging; and the
//! two halves of the Istio-shaped path with mTLS between them (TLS 1.3, client certificates
//! required). HAProxy 2.6 cannot match URI SANs, so the client half verifies the server's DNS
//! SAN (`localhost`, which the dev CA puts beside the SPIFFE ID).

use std::{fmt::Write as _, net::SocketAddr, path::Path};

const HEAD: &str = "global
    nbthread 1
    maxconn 8000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 10s
    timeout client  120s
    timeout server  120s
    timeout http-keep-alive 120s
";

/// One plain hop: `listen` → `upstream`.
pub fn one_hop(listen: SocketAddr, upstream: SocketAddr) -> String {
    let mut s = HEAD.to_owned();
    let _ = write!(
        s,
        "frontend hop\n    bind {listen}\n    default_backend app\nbackend app\n    server app {upstream}\n"
    );
    s
}

/// The client-side sidecar: plain `listen` → mTLS → `server_sidecar`. `client_pem` holds the
/// certificate and its key (HAProxy reads both from one file).
pub fn client_half(
    listen: SocketAddr,
    server_sidecar: SocketAddr,
    ca: &Path,
    client_pem: &Path,
) -> String {
    let mut s = HEAD.to_owned();
    let _ = write!(
        s,
        "frontend outbound\n    bind {listen}\n    default_backend mtls\nbackend mtls\n    \
         server peer {server_sidecar} ssl ssl-min-ver TLSv1.3 verify required ca-file {ca} crt {crt} \
         sni str(localhost) verifyhost localhost alpn http/1.1\n",
        ca = ca.display(),
        crt = client_pem.display(),
    );
    s
}

/// The server-side sidecar: mTLS `listen` (client certificate required) → plain `upstream`.
pub fn server_half(
    listen: SocketAddr,
    upstream: SocketAddr,
    ca: &Path,
    server_pem: &Path,
) -> String {
    let mut s = HEAD.to_owned();
    let _ = write!(
        s,
        "frontend inbound\n    bind {listen} ssl ssl-min-ver TLSv1.3 crt {crt} ca-file {ca} verify required alpn http/1.1\n    \
         default_backend app\nbackend app\n    server app {upstream}\n",
        ca = ca.display(),
        crt = server_pem.display(),
    );
    s
}
