//! Limits of a server's connections: how long each stage may take and how much each may hold.

use std::{sync::Arc, time::Duration};

use mesh_core::discover::Announcement;

/// Most connections served at once: 10,000. Beyond it a new connection is closed as soon as it
/// is accepted (clients see a reset and can try another endpoint) rather than left in the
/// kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time an HTTP/1.1 request head may take to arrive, counted from the moment the server waits
/// for it (after the previous response, too, so it is also how long an idle keep-alive
/// connection stays open): 30 s, hyper's default.
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a connection with no request in flight stays open: 5 min (Envoy's stream idle timeout;
/// longer than the 90 s clients keep idle pooled connections, so clients close first).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 `PING` sent after this long without a frame from the client: 60 s.
pub const DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A client that does not answer the `PING` within this is disconnected: 20 s (hyper's and
/// gRPC's default).
pub const DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Concurrent HTTP/2 streams per connection: 200 (hyper's default; Envoy allows 2^31 and
/// gRPC-Go 100 per connection).
pub const DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS: u32 = 200;
/// Largest request header block: 16 KiB for HTTP/2 (hyper's default), and HTTP/1.1's read
/// buffer holds the head in 400 KiB (hyper's default buffer, which also bounds the head).
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 streams a client may reset before the server has accepted them, per connection
/// (CVE-2023-44487, "rapid reset"): 20, hyper's default.
pub const DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Limits of the connections a [`serve`](super::serve) accepts. The handshake (TLS, and the
/// first bytes telling HTTP/1.1 from HTTP/2) is bounded by the
/// [`Acceptor`](super::Acceptor)'s handshake timeout; everything after it here. Every stage of
/// a connection is bounded in time, and the number of connections in number:
///
/// | stage | bound |
/// |---|---|
/// | accepted, nothing sent / half a preface / a ClientHello then nothing | `Acceptor` handshake timeout (10 s) |
/// | HTTP/1.1 request head (and the keep-alive wait before it) | `request_head_timeout` (30 s) |
/// | HTTP/2 connection with no stream open | `idle_timeout` (5 min) |
/// | HTTP/2 client that stops answering | `http2_keep_alive_*` (PING after 60 s of silence, 20 s to answer) |
/// | connections at once | `max_connections` (10,000) |
/// | HTTP/2 streams per connection, header block size, early resets | `http2_max_concurrent_streams` (200), `max_header_list_bytes` (16 KiB), `http2_max_pending_accept_resets` (20) |
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`DEFAULT_REQUEST_HEAD_TIMEOUT`].
    pub request_head_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`]; `None`: never closed for idleness.
    pub idle_timeout: Option<Duration>,
    /// See [`DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL`]; `None`: no pings.
    pub http2_keep_alive_interval: Option<Duration>,
    /// See [`DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT`].
    pub http2_keep_alive_timeout: Duration,
    /// See [`DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS`].
    pub http2_max_concurrent_streams: u32,
    /// See [`DEFAULT_MAX_HEADER_LIST_BYTES`].
    pub max_header_list_bytes: u32,
    /// See [`DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESETS`].
    pub http2_max_pending_accept_resets: usize,
    /// Registry records withdrawn when the shutdown signal comes, before the connections
    /// drain (see [`announce`](Self::announce)).
    pub announcements: Vec<Arc<dyn Announcement>>,
}

impl ServerSettings {
    /// Withdraws `announcement` (a registration of this server in a registry, e.g. etcd) when
    /// the shutdown signal of [`serve_with_settings`](super::serve_with_settings) comes: the
    /// server keeps accepting while the record is removed (at most
    /// [`WITHDRAW_TIMEOUT`]), then drains, so clients move away before it stops.
    pub fn announce(mut self, announcement: impl Announcement) -> Self {
        self.announcements.push(Arc::new(announcement));
        self
    }
}

/// How long a shutdown waits for each announcement's withdrawal.
pub const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_head_timeout: DEFAULT_REQUEST_HEAD_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            http2_keep_alive_interval: Some(DEFAULT_HTTP2_KEEP_ALIVE_INTERVAL),
            http2_keep_alive_timeout: DEFAULT_HTTP2_KEEP_ALIVE_TIMEOUT,
            http2_max_concurrent_streams: DEFAULT_HTTP2_MAX_CONCURRENT_STREAMS,
            max_header_list_bytes: DEFAULT_MAX_HEADER_LIST_BYTES,
            http2_max_pending_accept_resets: DEFAULT_HTTP2_MAX_PENDING_ACCEPT_RESETS,
            announcements: Vec::new(),
        }
    }
}
