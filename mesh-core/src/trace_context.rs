//! W3C trace context (`traceparent` / `tracestate`), carried task-locally from the request a
//! server is handling to the calls it makes.
//!
//! A sidecar cannot connect an incoming request to the outgoing ones its application makes, so
//! Istio asks every application to copy the trace headers by hand. In-process we can: the
//! server layers of mesh-hyper and mesh-tonic parse the incoming `traceparent` (or start a new
//! trace when there is none or it is malformed), give the handler's future a [`TraceContext`]
//! for this hop, and every mesh client request made from that future gets a `traceparent` whose
//! parent is this hop, with the same trace id and `tracestate`.
//!
//! **Why task-local** (like [`Deadline`](crate::deadline::Deadline)): request extensions would
//! need the application to move them from the incoming request to each outgoing one, which is
//! exactly the hand copying this removes. The limit: a task the handler *spawns* does not
//! inherit task-locals; run its future in [`TraceContext::scope`] with [`TraceContext::current`]
//! to carry the context over.
//!
//! ```
//! use mesh_core::trace_context::TraceContext;
//!
//! # async fn run() {
//! let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None)
//!     .unwrap();
//! let hop = incoming.child(); // this server's span
//! hop.clone().scope(async {
//!     let outgoing = TraceContext::current().unwrap().child();
//!     assert_eq!(outgoing.trace_id(), incoming.trace_id());
//! }).await;
//! # }
//! ```

use std::{fmt, future::Future};

use thiserror::Error;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` passed on: 512 bytes, what the W3C recommendation says vendors must at
/// least propagate; longer values are dropped rather than truncated mid-entry.
const MAX_TRACESTATE: usize = 512;

/// One hop's trace context: the trace, this hop's span, the sampling flag and vendor state.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The span this one is a child of (`None` for a root, or a context parsed off the wire).
    parent_id: Option<[u8; 8]>,
    flags: u8,
    tracestate: Option<std::sync::Arc<str>>,
}

/// Why a `traceparent` was not accepted (the receiver then starts a new trace).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("invalid traceparent: {0}")]
pub struct TraceParseError(&'static str);

impl TraceContext {
    /// A new trace (random ids), sampled.
    pub fn new_root() -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
        trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        Self {
            trace_id,
            span_id: nonzero_u64().to_be_bytes(),
            parent_id: None,
            flags: 0x01,
            tracestate: None,
        }
    }

    /// Parses a `traceparent` (and the `tracestate` that came with it) per W3C Trace Context:
    /// `version-traceid-parentid-flags`, lowercase hex, ids not all zero, version `ff` invalid;
    /// versions above `00` are read by their first four fields.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Result<Self, TraceParseError> {
        let tp = traceparent.trim();
        let b = tp.as_bytes();
        if b.len() < 55 {
            return Err(TraceParseError("shorter than 55 characters"));
        }
        let version = hex_u8(&b[0..2]).ok_or(TraceParseError("version is not hex"))?;
        if version == 0xff {
            return Err(TraceParseError("version ff is invalid"));
        }
        if (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return Err(TraceParseError("wrong length for its version"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(TraceParseError("fields are not separated by '-'"));
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out =
                hex_u8(&b[3 + 2 * i..5 + 2 * i]).ok_or(TraceParseError("trace id is not hex"))?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_u8(&b[36 + 2 * i..38 + 2 * i])
                .ok_or(TraceParseError("parent id is not hex"))?;
        }
        let flags = hex_u8(&b[53..55]).ok_or(TraceParseError("flags are not hex"))?;
        if trace_id == [0; 16] {
            return Err(TraceParseError("trace id is all zeros"));
        }
        if span_id == [0; 8] {
            return Err(TraceParseError("parent id is all zeros"));
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
            .map(std::sync::Arc::from);
        Ok(Self {
            trace_id,
            span_id,
            parent_id: None,
            flags,
            tracestate,
        })
    }

    /// The context of a server handling a request that carried these headers: a child of the
    /// caller's span when `traceparent` is valid, else a new trace (a malformed header is
    /// logged at `debug` and replaced, as the W3C recommendation says).
    pub fn for_incoming(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        match traceparent.map(|tp| (tp, Self::parse(tp, tracestate))) {
            None => Self::new_root(),
            Some((_, Ok(parent))) => parent.child(),
            Some((tp, Err(e))) => {
                tracing::debug!(error = %e, traceparent = tp, "starting a new trace");
                Self::new_root()
            }
        }
    }

    /// A new span in the same trace, whose parent is this one. Only the `sampled` flag is
    /// passed on: the others are unknown to version `00`, which W3C says to zero.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero_u64().to_be_bytes(),
            parent_id: Some(self.span_id),
            flags: self.flags & 0x01,
            tracestate: self.tracestate.clone(),
        }
    }

    /// The span this one is a child of, if it is one.
    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id.map(SpanId)
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// This hop's span id.
    pub fn span_id(&self) -> SpanId {
        SpanId(self.span_id)
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    /// The vendor `tracestate`, passed on unchanged.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The `traceparent` header value naming this span as the parent (version `00`).
    pub fn traceparent(&self) -> String {
        self.traceparent_bytes()
            .iter()
            .map(|b| char::from(*b))
            .collect()
    }

    /// [`traceparent`](Self::traceparent) as ASCII bytes, without allocating (what the clients
    /// put in a header on every request).
    pub fn traceparent_bytes(&self) -> [u8; 55] {
        let mut b = [b'-'; 55];
        b[0] = b'0';
        b[1] = b'0';
        hex_into(&mut b[3..35], &self.trace_id);
        hex_into(&mut b[36..52], &self.span_id);
        hex_into(&mut b[53..55], &[self.flags]);
        b
    }

    /// Records `trace_id`, `span_id` and `parent_id` (when there is one) on `span`, whose
    /// fields must have been declared (`tracing::field::Empty`): how the mesh's client and server
    /// spans link up across hops.
    pub fn record_on(&self, span: &tracing::Span) {
        span.record("trace_id", tracing::field::display(self.trace_id()));
        span.record("span_id", tracing::field::display(self.span_id()));
        if let Some(parent) = self.parent_id() {
            span.record("parent_id", tracing::field::display(parent));
        }
    }

    /// The context of the request the current task is handling, if a mesh server layer (or
    /// [`scope`](Self::scope)) set one.
    pub fn current() -> Option<TraceContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with this context as [`current`](Self::current).
    pub fn scope<F: Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<Self, F> {
        CURRENT.scope(self, fut)
    }
}

/// Runs `f` (synchronously) with `ctx` as [`TraceContext::current`]: for code that creates a
/// future eagerly, such as a tower service's `call`.
pub fn sync_scope<R>(ctx: TraceContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(ctx, f)
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

/// A 16-byte trace id; displays as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// An 8-byte span id; displays as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(32);
        push_hex(&mut s, &self.0);
        f.write_str(&s)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(16);
        push_hex(&mut s, &self.0);
        f.write_str(&s)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

fn hex_u8(b: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(d(b[0])? << 4 | d(b[1])?)
}

/// Two lowercase hex digits for every byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_round_trip() {
        let c = TraceContext::parse(TP, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(c.parent_id(), None);
        assert_eq!(c.traceparent(), TP);
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.sampled());
        assert_eq!(c.tracestate(), Some("congo=t61rcWkgMzE"));
        let child = c.child();
        assert_eq!(child.trace_id(), c.trace_id());
        assert_ne!(child.span_id(), c.span_id());
        assert_eq!(child.parent_id(), Some(c.span_id()));
        assert_eq!(child.tracestate(), c.tracestate());
        // Unknown flags are not passed on.
        let odd = TraceContext::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            None,
        )
        .unwrap();
        assert!(odd.child().traceparent().ends_with("-01"));
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad, None).is_err(), "{bad:?} accepted");
        }
        // A future version may carry more fields after a dash.
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(TraceContext::parse(v, None).is_ok());
    }

    #[test]
    fn new_traces_are_valid_and_distinct() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id(), b.trace_id());
        assert_eq!(TraceContext::parse(&a.traceparent(), None).unwrap(), a);
        assert_eq!(
            TraceContext::for_incoming(Some("junk"), None)
                .traceparent()
                .len(),
            55
        );
        let hop = TraceContext::for_incoming(Some(&a.traceparent()), None);
        assert_eq!(hop.trace_id(), a.trace_id());
        assert_ne!(hop.span_id(), a.span_id());
    }

    #[tokio::test]
    async fn scope_sets_current() {
        assert!(TraceContext::current().is_none());
        let c = TraceContext::new_root();
        let seen = c.clone().scope(async { TraceContext::current() }).await;
        assert_eq!(seen, Some(c));
    }
}
