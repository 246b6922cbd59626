//! Knowing which HTTP version a connection speaks before it is served, within a deadline.
//!
//! hyper-util's automatic version detection waits for the client's first bytes with no time
//! limit, and hyper's HTTP/2 server none for the preface and `SETTINGS`: a client that connects
//! and sends nothing, or a `P`, or half of the preface, held a task and a file descriptor for
//! ever. [`detect`] reads those bytes itself, before the deadline of the acceptor's handshake
//! timeout:
//!
//! - HTTP/1.1: decided by the first byte that differs from the HTTP/2 preface (`G` of `GET`,
//!   the `O` of `POST`); hyper's request-head timeout bounds the rest of the head;
//! - HTTP/2: the 24-byte client preface **and** the client's first frame, which RFC 9113
//!   §3.4 requires to be `SETTINGS`, have arrived whole;
//! - TLS with ALPN `http/1.1`: HTTP/1.1 without reading; ALPN `h2`: the preface and
//!   `SETTINGS` are still awaited.
//!
//! The bytes read are handed back to hyper first ([`HttpStream`]), so nothing is lost.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::stream::{Alpn, ServerStream};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header's length.
const FRAME_HEADER: usize = 9;
/// The `SETTINGS` frame type.
const SETTINGS: u8 = 0x4;
/// The largest frame a peer may send before settings are exchanged (RFC 9113 §4.2).
const MAX_INITIAL_FRAME: usize = 16_384;

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1 (or 1.0).
    Http1,
    /// HTTP/2: by ALPN over TLS, or with prior knowledge over plaintext (h2c).
    Http2,
}

/// Why a connection's protocol could not be told.
#[derive(Debug)]
pub(crate) enum DetectError {
    /// The client closed the connection first.
    Closed,
    /// It sent the HTTP/2 preface but then a frame other than `SETTINGS`, or one too large.
    BadFirstFrame,
    /// Reading failed.
    Io(io::Error),
    /// The deadline passed.
    TimedOut,
}

/// Reads until the connection's HTTP version is known (see the module docs), at most until
/// `deadline`.
pub(crate) async fn detect(
    mut stream: ServerStream,
    deadline: tokio::time::Instant,
) -> Result<(HttpStream, HttpVersion), DetectError> {
    let alpn_h2 = match stream.alpn() {
        Some(Alpn::Http11) => {
            return Ok((HttpStream::new(stream, BytesMut::new()), HttpVersion::Http1));
        }
        Some(Alpn::H2) => true,
        None => false,
    };
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if let Some(version) = decide(&buf, alpn_h2)? {
            return Ok((HttpStream::new(stream, buf), version));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Err(DetectError::TimedOut),
            Ok(Ok(0)) => return Err(DetectError::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(DetectError::Io(e)),
        }
    }
}

/// The version the bytes so far show, or `None` when more are needed.
fn decide(buf: &[u8], alpn_h2: bool) -> Result<Option<HttpVersion>, DetectError> {
    let seen = buf.len().min(H2_PREFACE.len());
    if buf[..seen] != H2_PREFACE[..seen] {
        // Not the preface: HTTP/1.1 (hyper answers garbage with 400). With ALPN h2 the client
        // promised HTTP/2; hyper's HTTP/2 server will send it a GOAWAY.
        return Ok(Some(if alpn_h2 {
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        }));
    }
    if buf.len() < H2_PREFACE.len() + FRAME_HEADER {
        return Ok(None);
    }
    let header = &buf[H2_PREFACE.len()..H2_PREFACE.len() + FRAME_HEADER];
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != SETTINGS || length > MAX_INITIAL_FRAME {
        return Err(DetectError::BadFirstFrame);
    }
    Ok((buf.len() >= H2_PREFACE.len() + FRAME_HEADER + length).then_some(HttpVersion::Http2))
}

/// An accepted connection whose first bytes were read to detect its protocol: they are read
/// again first.
pub struct HttpStream {
    stream: ServerStream,
    prefix: BytesMut,
}

impl HttpStream {
    fn new(stream: ServerStream, prefix: BytesMut) -> Self {
        Self { stream, prefix }
    }

    /// The connection underneath.
    pub fn get_ref(&self) -> &ServerStream {
        &self.stream
    }
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(len: usize) -> Vec<u8> {
        let mut v = H2_PREFACE.to_vec();
        v.extend_from_slice(&[0, (len >> 8) as u8, len as u8, SETTINGS, 0, 0, 0, 0, 0]);
        v.extend(std::iter::repeat_n(0, len));
        v
    }

    #[test]
    fn decides_from_the_first_differing_byte_or_a_whole_settings_frame() {
        assert_eq!(decide(b"", false).unwrap(), None);
        assert_eq!(
            decide(b"P", false).unwrap(),
            None,
            "P may start the preface"
        );
        assert_eq!(decide(b"PRI * HT", false).unwrap(), None);
        assert_eq!(decide(b"G", false).unwrap(), Some(HttpVersion::Http1));
        assert_eq!(decide(b"PO", false).unwrap(), Some(HttpVersion::Http1));
        assert_eq!(
            decide(b"PUT / HTTP/1.1", false).unwrap(),
            Some(HttpVersion::Http1)
        );
        assert_eq!(
            decide(H2_PREFACE, false).unwrap(),
            None,
            "SETTINGS not yet seen"
        );
        let s = settings(12);
        assert_eq!(decide(&s[..s.len() - 1], false).unwrap(), None);
        assert_eq!(decide(&s, false).unwrap(), Some(HttpVersion::Http2));
        assert_eq!(
            decide(&settings(0), true).unwrap(),
            Some(HttpVersion::Http2)
        );
        let mut ping = settings(0);
        ping[H2_PREFACE.len() + 3] = 0x6;
        assert!(matches!(
            decide(&ping, false),
            Err(DetectError::BadFirstFrame)
        ));
        let mut huge = settings(0);
        huge[H2_PREFACE.len()] = 0x7f;
        assert!(matches!(
            decide(&huge, false),
            Err(DetectError::BadFirstFrame)
        ));
    }
}
