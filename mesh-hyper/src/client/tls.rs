//! The endpoint connection: plain TCP, or mTLS verifying the endpoint's SPIFFE ID.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to an endpoint.
pub enum EndpointStream {
    /// Plaintext.
    Plain(TokioIo<TcpStream>),
    /// mTLS.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for EndpointStream {
    fn connected(&self) -> Connected {
        match self {
            EndpointStream::Plain(s) => s.connected(),
            EndpointStream::Tls(s) => {
                let (tcp, tls) = s.inner().get_ref();
                let connected = tcp.connected();
                if tls.alpn_protocol() == Some(mesh_core::tls::ALPN_H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for EndpointStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EndpointStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            EndpointStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for EndpointStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EndpointStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            EndpointStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EndpointStream::Plain(s) => Pin::new(s).poll_flush(cx),
            EndpointStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EndpointStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            EndpointStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EndpointStream::Plain(s) => s.is_write_vectored(),
            EndpointStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EndpointStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            EndpointStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
