//! Accepting connections: mTLS (STRICT), mTLS or plaintext (PERMISSIVE), or plaintext.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use mesh_core::{
    identity::PeerIdentity,
    tls::{ALPN_H2, ALPN_HTTP11, ServerTlsMode, TlsError, TlsSide, TlsStore, spiffe_id_of},
};
use tokio::net::TcpStream;

use super::stream::ServerStream;
use tokio_rustls::TlsAcceptor;

/// First byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Turns accepted TCP connections into mTLS or plaintext streams, per the server's
/// [`ServerTlsMode`], and tells who the peer is.
///
/// ```no_run
/// use mesh_core::tls::{ServerTlsMode, TlsFiles, TlsSettings, TlsStore};
/// use mesh_hyper::server::Acceptor;
///
/// let store = TlsStore::load(TlsFiles::new("cert.pem", "key.pem", "ca.pem"), TlsSettings::default())?;
/// let acceptor = Acceptor::new(Some(store), ServerTlsMode::Strict)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Acceptor {
    tls: Option<(TlsAcceptor, TlsStore)>,
    mode: Mode,
    handshake_timeout: Duration,
}

/// Where the mode comes from.
#[derive(Clone)]
enum Mode {
    Fixed(ServerTlsMode),
    /// The PeerAuthentication in force for this workload and port.
    Live(mesh_core::config::ConfigStore, u16),
}

/// Time a client gets to send its first bytes and finish the TLS handshake. 10 s: Linkerd's
/// inbound protocol-detection timeout; a client that connects and says nothing must not hold a
/// task (and a file descriptor) for ever.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// STRICT mode and the client spoke plaintext.
    #[error("plaintext connection from {0} refused: mTLS is required (STRICT)")]
    PlaintextRefused(SocketAddr),
    /// The TLS handshake failed (no client certificate, unknown CA, expired, ...).
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The client.
        peer: SocketAddr,
        /// rustls' reason.
        #[source]
        source: io::Error,
    },
    /// The client sent nothing, or did not finish its handshake, in time.
    #[error("connection from {peer}: no complete handshake within {}", mesh_core::duration::format(*waited))]
    TimedOut {
        /// The client.
        peer: SocketAddr,
        /// The time it had.
        waited: Duration,
    },
    /// The client closed the connection before it said which protocol it speaks.
    #[error("connection from {peer} closed before its first request")]
    Closed {
        /// The client.
        peer: SocketAddr,
    },
    /// The client sent the HTTP/2 preface followed by something other than `SETTINGS`.
    #[error("connection from {peer}: the HTTP/2 preface is not followed by a SETTINGS frame")]
    Protocol {
        /// The client.
        peer: SocketAddr,
    },
    /// Reading the first bytes failed.
    #[error("connection from {peer}: {source}")]
    Io {
        /// The client.
        peer: SocketAddr,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl Acceptor {
    /// An acceptor for `mode`; STRICT and PERMISSIVE need the server's TLS identity.
    pub fn new(store: Option<TlsStore>, mode: ServerTlsMode) -> Result<Self, TlsError> {
        let tls = match (mode, store) {
            (ServerTlsMode::Disable, _) => None,
            (_, None) => {
                return Err(TlsError::Rustls(format!(
                    "{mode:?} mTLS needs the server's TLS identity (a TlsStore)"
                )));
            }
            (_, Some(store)) => {
                let config = store.server_config(&[ALPN_H2, ALPN_HTTP11])?;
                Some((TlsAcceptor::from(Arc::clone(&config)), store))
            }
        };
        Ok(Self {
            tls,
            mode: Mode::Fixed(mode),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// An acceptor whose mode is the PeerAuthentication of the documents in `config` for this
    /// workload on `port` (its `portLevelMtls`, its selector policy, its namespace's, the mesh's,
    /// else Istio's default PERMISSIVE), read at every connection, so a change applies to new
    /// connections. Needs the server's TLS identity.
    pub fn from_config(
        store: TlsStore,
        config: mesh_core::config::ConfigStore,
        port: u16,
    ) -> Result<Self, TlsError> {
        let tls_config = store.server_config(&[ALPN_H2, ALPN_HTTP11])?;
        Ok(Self {
            tls: Some((TlsAcceptor::from(Arc::clone(&tls_config)), store)),
            mode: Mode::Live(config, port),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// A plaintext-only acceptor.
    pub fn plaintext() -> Self {
        Self {
            tls: None,
            mode: Mode::Fixed(ServerTlsMode::Disable),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The same acceptor with another handshake timeout (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]): the time from accepting the TCP connection to knowing
    /// whether it speaks TLS and, if so, to the end of the handshake.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The mode (for an acceptor following the documents, the one in force now).
    pub fn mode(&self) -> ServerTlsMode {
        match &self.mode {
            Mode::Fixed(m) => *m,
            Mode::Live(config, port) => config.load().peer_mode(*port),
        }
    }

    /// Accepts one connection for an HTTP server: the TLS handshake (per the mode), then the
    /// first bytes that say which HTTP version the client speaks (for HTTP/2, the preface and
    /// the client's `SETTINGS`), all within the handshake timeout from now, in every mode (see
    /// the server module's protocol detection). A client that sends nothing, or part of a preface, is
    /// dropped when the time is up.
    pub async fn accept_http(&self, tcp: TcpStream) -> Result<Accepted, AcceptError> {
        let waited = self.handshake_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let (stream, identity) = self.accept_until(tcp, deadline).await?;
        let peer = stream.peer_addr();
        match super::detect::detect(stream, deadline).await {
            Ok((stream, version)) => Ok(Accepted {
                stream,
                identity,
                version,
            }),
            Err(e) => {
                use super::detect::DetectError;
                tracing::debug!(%peer, error = ?e, "no HTTP request or preface in time");
                Err(match e {
                    DetectError::TimedOut => AcceptError::TimedOut { peer, waited },
                    DetectError::Closed => AcceptError::Closed { peer },
                    DetectError::BadFirstFrame => AcceptError::Protocol { peer },
                    DetectError::Io(source) => AcceptError::Io { peer, source },
                })
            }
        }
    }

    /// Accepts one connection: the stream to serve and the peer's identity (none for plaintext).
    /// With TLS configured, the first bytes and the handshake must arrive within the handshake
    /// timeout. This does not wait for the client's first request: HTTP servers use
    /// [`accept_http`](Self::accept_http), which does.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(ServerStream, PeerIdentity), AcceptError> {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        self.accept_until(tcp, deadline).await
    }

    async fn accept_until(
        &self,
        tcp: TcpStream,
        deadline: tokio::time::Instant,
    ) -> Result<(ServerStream, PeerIdentity), AcceptError> {
        let peer = tcp.peer_addr().map_err(|source| AcceptError::Io {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let mode = self.mode();
        let Some((acceptor, store)) = self.tls.as_ref().filter(|_| mode != ServerTlsMode::Disable)
        else {
            return Ok((ServerStream::Plain(tcp), PeerIdentity(None)));
        };
        let waited = self.handshake_timeout;
        let timed_out = || {
            tracing::debug!(%peer, ?waited, "no complete handshake in time");
            AcceptError::TimedOut { peer, waited }
        };
        let is_tls = {
            let mut first = [0u8; 1];
            match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(0)) => false,
                Ok(Ok(_)) => first[0] == TLS_HANDSHAKE,
                Ok(Err(source)) => return Err(AcceptError::Io { peer, source }),
            }
        };
        if !is_tls {
            return match mode {
                ServerTlsMode::Permissive => {
                    tracing::debug!(%peer, "plaintext connection accepted (PERMISSIVE)");
                    Ok((ServerStream::Plain(tcp), PeerIdentity(None)))
                }
                _ => {
                    tracing::debug!(%peer, "plaintext connection refused (STRICT)");
                    Err(AcceptError::PlaintextRefused(peer))
                }
            };
        }
        let stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(handshaken) => handshaken.map_err(|source| {
                let reason = store.count_handshake_failure(TlsSide::Server, &source);
                tracing::debug!(%peer, error = %source, reason = reason.as_str(), "TLS handshake failed");
                AcceptError::Handshake { peer, source }
            })?,
            Err(_) => {
                // A ClientHello came, the rest did not: a failed handshake for the metrics.
                let error = io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
                store.count_handshake_failure(TlsSide::Server, &error);
                return Err(timed_out());
            }
        };
        store.count_handshake(TlsSide::Server);
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| spiffe_id_of(leaf).ok());
        tracing::debug!(%peer, identity = ?identity, "mTLS connection accepted");
        Ok((ServerStream::Tls(Box::new(stream)), PeerIdentity(identity)))
    }
}

/// A connection accepted for an HTTP server (see [`Acceptor::accept_http`]).
pub struct Accepted {
    /// The stream, with the bytes read to detect its protocol put back in front.
    pub stream: super::HttpStream,
    /// The peer's verified identity (none for plaintext).
    pub identity: PeerIdentity,
    /// The HTTP version it speaks.
    pub version: super::HttpVersion,
}
