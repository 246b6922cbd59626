//! Accepting meshed connections for tonic's `serve_with_incoming`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use std::sync::Arc;

use mesh_core::identity::PeerIdentity;
use mesh_hyper::server::{Acceptor, HttpStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tonic::transport::server::Connected;

/// Handshakes in progress at once (a flood of slow or silent clients cannot grow memory
/// without bound; beyond it new connections wait in the kernel's backlog). Each is bounded in
/// time by the acceptor's handshake timeout.
pub const MAX_HANDSHAKES: usize = 1024;

/// Finished connections waiting for tonic to take them.
const READY: usize = 64;

/// Accepted connections, handshaken by `acceptor` (mTLS, plaintext or both, per its mode):
/// the stream to give tonic's `Server::serve_with_incoming`. Handshakes run concurrently (a slow
/// client does not hold up the others), at most [`MAX_HANDSHAKES`] at once, each within the
/// acceptor's handshake timeout, which covers the TLS handshake **and** the HTTP/2 preface and
/// `SETTINGS` (see `Acceptor::accept_http`): a client that connects and says nothing, in any
/// mode, is dropped when its time is up. Only finished connections wait for tonic, so silent
/// clients never stand in the way of real ones. Connections that fail their handshake are
/// logged at `debug` and dropped. Accepting stops when the stream is dropped.
pub fn incoming(listener: TcpListener, acceptor: Acceptor) -> Incoming {
    let (tx, rx) = mpsc::channel(READY);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let accepted = acceptor.accept_http(tcp).await;
                // The handshake is over: its place goes to the next one, whatever tonic does.
                drop(permit);
                match accepted {
                    Ok(a) => {
                        let stream = MeshStream {
                            stream: a.stream,
                            identity: a.identity,
                        };
                        // Only a finished connection waits for a place in the queue.
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "connection not accepted"),
                }
            });
        }
    });
    Incoming { rx }
}

/// The stream of accepted connections (see [`incoming`]).
pub struct Incoming {
    rx: mpsc::Receiver<io::Result<MeshStream>>,
}

impl futures_core::Stream for Incoming {
    type Item = io::Result<MeshStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// One accepted connection: the stream and the peer's verified identity, which tonic puts in
/// every request's extensions (as [`PeerIdentity`]).
pub struct MeshStream {
    stream: HttpStream,
    identity: PeerIdentity,
}

impl MeshStream {
    /// The peer's identity (none for plaintext connections).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

impl std::fmt::Debug for MeshStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshStream")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Connected for MeshStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
