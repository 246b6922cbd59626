//! Accepting meshed connections for tonic's `serve_with_incoming`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use mesh_core::identity::PeerIdentity;
use mesh_hyper::server::{Acceptor, ServerStream};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::mpsc,
};
use tonic::transport::server::Connected;

/// Handshakes in progress at once before accepting waits (a flood of slow handshakes cannot
/// grow memory without bound).
const BACKLOG: usize = 256;

/// Accepted connections, handshaken by `acceptor` (mTLS, plaintext or both, per its mode):
/// the stream to give tonic's `Server::serve_with_incoming`. Handshakes run concurrently (a slow
/// client does not hold up the others); connections that fail theirs are logged at `debug` and
/// dropped. Accepting stops when the stream is dropped.
pub fn incoming(listener: TcpListener, acceptor: Acceptor) -> Incoming {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
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
            let Ok(permit) = tx.clone().reserve_owned().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok((stream, identity)) => {
                        permit.send(Ok(MeshStream { stream, identity }));
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
    stream: ServerStream,
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
