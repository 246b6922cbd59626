//! Request bodies that can be sent again.
//!
//! [`ReplayBody`] wraps a request body for the first attempt and records what it sends, up to a
//! byte limit. A retry (or hedge) gets a [`replay`](ReplayBody::replay) that sends the recorded
//! bytes again, then continues with whatever the original body has not produced yet. A body over
//! the limit stops recording (and frees what it kept): the request is sent once and not retried.
//! An empty body (a GET) is replayed without any bookkeeping.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use mesh_core::retry::ReplayBody;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let first = ReplayBody::new(Full::new(Bytes::from("hello")), 1024);
//! let again = first.replay().unwrap();
//! assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
//! assert_eq!(again.collect().await.unwrap().to_bytes(), "hello");
//! # }
//! ```

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Error of a [`ReplayBody`]: the original body's error, or a replay that cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The original body failed.
    #[error("request body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// Another attempt still holds the rest of the original body.
    #[error("request body is still being sent by another attempt")]
    InUse,
}

/// A request body that records what it sends so that it can be sent again. See the
/// [module docs](crate::retry).
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// The original body was empty.
    Empty,
    /// Too big to record: sent once. (In a mutex only so that the body need not be `Sync`;
    /// polling uses `get_mut`, which takes no lock.)
    Once(Mutex<B>),
    /// Recording / replaying.
    Shared {
        state: Arc<Mutex<State<B>>>,
        /// How many recorded chunks this attempt has sent.
        pos: usize,
        /// Whether this attempt sent the trailers.
        sent_trailers: bool,
    },
}

struct State<B> {
    /// The rest of the original body. Taken only for the duration of one poll, so attempts
    /// that run one after the other (retries) each continue it where the last one stopped.
    /// Attempts polling it concurrently would steal each other's wakers: hedges are only sent
    /// once the body is complete.
    body: Option<B>,
    chunks: Vec<Bytes>,
    recorded: usize,
    trailers: Option<HeaderMap>,
    /// The original body has ended.
    done: bool,
    /// More than `max` bytes were sent: nothing is kept, no replay is possible.
    overflow: bool,
    max: usize,
    /// The original body's size hint, for every replay.
    hint: SizeHint,
}

impl<B: Body> ReplayBody<B> {
    /// Wraps `body`, keeping up to `max_bytes` for replays (0: never replayable unless empty).
    pub fn new(body: B, max_bytes: usize) -> Self {
        if body.is_end_stream() {
            return Self { kind: Kind::Empty };
        }
        let hint = body.size_hint();
        if max_bytes == 0 || hint.lower() > max_bytes as u64 {
            return Self {
                kind: Kind::Once(Mutex::new(body)),
            };
        }
        let state = State {
            body: Some(body),
            chunks: Vec::new(),
            recorded: 0,
            trailers: None,
            done: false,
            overflow: false,
            max: max_bytes,
            hint,
        };
        Self {
            kind: Kind::Shared {
                state: Arc::new(Mutex::new(state)),
                pos: 0,
                sent_trailers: false,
            },
        }
    }

    /// Whether a replay could send the whole body again right now.
    pub fn is_replayable(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Once(_) => false,
            Kind::Shared { state, .. } => {
                let s = lock(state);
                !s.overflow && (s.done || s.body.is_some())
            }
        }
    }

    /// Whether the whole body has been read and recorded (a replay will not need the original).
    pub fn is_complete(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Once(_) => false,
            Kind::Shared { state, .. } => {
                let s = lock(state);
                !s.overflow && s.done
            }
        }
    }

    /// A body that sends the same bytes again, if the body is (still) replayable.
    pub fn replay(&self) -> Option<Self> {
        match &self.kind {
            Kind::Empty => Some(Self { kind: Kind::Empty }),
            Kind::Once(_) => None,
            Kind::Shared { state, .. } => {
                let s = lock(state);
                if s.overflow {
                    return None;
                }
                Some(Self {
                    kind: Kind::Shared {
                        state: state.clone(),
                        pos: 0,
                        sent_trailers: false,
                    },
                })
            }
        }
    }
}

fn lock<B>(state: &Mutex<State<B>>) -> MutexGuard<'_, State<B>> {
    // Every critical section leaves State consistent, so a poisoned lock is still usable.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = ReplayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReplayError>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Once(body) => match Pin::new(body.get_mut().unwrap_or_else(|e| e.into_inner()))
                .poll_frame(cx)
            {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                ))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ReplayError::Body(e.into())))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Kind::Shared {
                state,
                pos,
                sent_trailers,
            } => {
                let mut s = lock(state);
                // 1. What earlier attempts recorded.
                if *pos < s.chunks.len() {
                    let chunk = s.chunks[*pos].clone();
                    *pos += 1;
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if s.done {
                    if !*sent_trailers {
                        *sent_trailers = true;
                        if let Some(t) = s.trailers.clone() {
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                    }
                    return Poll::Ready(None);
                }
                // 2. The rest of the original body.
                let Some(mut body) = s.body.take() else {
                    return Poll::Ready(Some(Err(ReplayError::InUse)));
                };
                let polled = Pin::new(&mut body).poll_frame(cx);
                let out = match polled {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(mut data) => {
                            let bytes = data.copy_to_bytes(data.remaining());
                            if !s.overflow {
                                s.recorded += bytes.len();
                                if s.recorded > s.max {
                                    // Too big: stop recording and free what was kept.
                                    s.overflow = true;
                                    s.chunks = Vec::new();
                                } else {
                                    s.chunks.push(bytes.clone());
                                    *pos += 1;
                                }
                            }
                            // A body that knows it has ended (a `Full` after its one frame) may
                            // never be polled for its end: hyper stops at `is_end_stream`.
                            if body.is_end_stream() {
                                s.done = true;
                                *sent_trailers = true;
                            }
                            Poll::Ready(Some(Ok(Frame::data(bytes))))
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => {
                                s.trailers = Some(trailers.clone());
                                s.done = true;
                                *sent_trailers = true;
                                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                            }
                            // A frame that is neither data nor trailers: skip it.
                            Err(_) => {
                                cx.waker().wake_by_ref();
                                Poll::Pending
                            }
                        },
                    },
                    Poll::Ready(Some(Err(e))) => {
                        // A failed body cannot be replayed faithfully.
                        s.overflow = true;
                        s.chunks = Vec::new();
                        Poll::Ready(Some(Err(ReplayError::Body(e.into()))))
                    }
                    Poll::Ready(None) => {
                        s.done = true;
                        *sent_trailers = true;
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                };
                if !s.done {
                    s.body = Some(body);
                }
                out
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Once(b) => b.lock().unwrap_or_else(|e| e.into_inner()).is_end_stream(),
            Kind::Shared {
                state,
                pos,
                sent_trailers,
                ..
            } => {
                let s = lock(state);
                s.done && *pos >= s.chunks.len() && (*sent_trailers || s.trailers.is_none())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Once(b) => b.lock().unwrap_or_else(|e| e.into_inner()).size_hint(),
            Kind::Shared { state, .. } => lock(state).hint,
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Once(_) => "once",
            Kind::Shared { .. } => "replayable",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    use super::*;

    #[tokio::test]
    async fn empty_bodies_replay_for_free() {
        let b = ReplayBody::new(Empty::<Bytes>::new(), 1024);
        assert!(b.is_replayable() && b.is_complete());
        assert!(b.replay().unwrap().is_end_stream());
    }

    #[tokio::test]
    async fn replays_a_streamed_body_with_trailers() {
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("a"))),
            Ok(Frame::data(Bytes::from("bc"))),
            Ok(Frame::trailers({
                let mut h = HeaderMap::new();
                h.insert("x-t", "1".parse().unwrap());
                h
            })),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let first = ReplayBody::new(body, 16);
        let second = first.replay().unwrap();
        let got = first.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-t"], "1");
        assert_eq!(got.to_bytes(), "abc");
        let again = second.collect().await.unwrap();
        assert_eq!(again.trailers().unwrap()["x-t"], "1");
        assert_eq!(again.to_bytes(), "abc");
    }

    #[tokio::test]
    async fn a_replay_continues_where_the_first_attempt_stopped() {
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("a"))),
            Ok(Frame::data(Bytes::from("b"))),
        ];
        let mut first = ReplayBody::new(StreamBody::new(futures_util::stream::iter(frames)), 16);
        let spare = first.replay().unwrap();
        let one = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(one, "a");
        assert!(first.is_replayable() && !first.is_complete());
        // The server answered after one chunk; the retry sends both.
        drop(first);
        let retry = spare.replay().unwrap();
        assert_eq!(retry.collect().await.unwrap().to_bytes(), "ab");
        assert!(spare.is_complete());
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_not_replayable() {
        let big = ReplayBody::new(Full::new(Bytes::from(vec![0u8; 100])), 10);
        assert!(!big.is_replayable());
        assert!(big.replay().is_none());
        assert_eq!(big.collect().await.unwrap().to_bytes().len(), 100);

        // Unknown size: found out while streaming.
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![1u8; 8]))),
            Ok(Frame::data(Bytes::from(vec![2u8; 8]))),
        ];
        let streamed = ReplayBody::new(StreamBody::new(futures_util::stream::iter(frames)), 10);
        let replay = streamed.replay().unwrap();
        assert_eq!(streamed.collect().await.unwrap().to_bytes().len(), 16);
        assert!(replay.replay().is_none());
    }
}
