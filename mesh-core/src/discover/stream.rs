//! Endpoint snapshots as a tower `Discover` stream of changes.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::Stream;
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use super::Snapshot;
use crate::endpoint::{Endpoint, EndpointSet};

/// A stream of endpoint changes for one service, usable wherever tower expects a
/// [`Discover`](tower::discover::Discover) (tower implements `Discover` for every `TryStream` of
/// [`Change`]s).
///
/// Each new snapshot is diffed against the previous one: an added endpoint yields
/// `Change::Insert`, a removed one `Change::Remove`, and an endpoint whose weight, labels or
/// identity changed yields `Change::Insert` again under the same key (tower's balancers replace
/// the service they had under that key). Keys are socket addresses. The stream ends when the
/// source is dropped.
pub struct EndpointStream {
    snapshots: WatchStream<Snapshot>,
    current: EndpointSet,
    pending: VecDeque<Change<SocketAddr, Endpoint>>,
}

impl EndpointStream {
    pub(super) fn new(rx: watch::Receiver<Snapshot>) -> Self {
        Self {
            snapshots: WatchStream::new(rx),
            current: EndpointSet::empty(),
            pending: VecDeque::new(),
        }
    }
}

/// Appends to `out` the changes that turn `old` into `new` (both sorted by address).
pub(crate) fn diff(
    old: &EndpointSet,
    new: &EndpointSet,
    out: &mut VecDeque<Change<SocketAddr, Endpoint>>,
) {
    let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(o), None) => {
                out.push_back(Change::Remove(o.addr));
                a.next();
            }
            (None, Some(n)) => {
                out.push_back(Change::Insert(n.addr, (*n).clone()));
                b.next();
            }
            (Some(o), Some(n)) => match o.addr.cmp(&n.addr) {
                std::cmp::Ordering::Less => {
                    out.push_back(Change::Remove(o.addr));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push_back(Change::Insert(n.addr, (*n).clone()));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if o != n {
                        out.push_back(Change::Insert(n.addr, (*n).clone()));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

impl Stream for EndpointStream {
    type Item = Result<Change<SocketAddr, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut this.snapshots).poll_next(cx) {
                Poll::Ready(Some(snap)) => {
                    if let Some(next) = snap.endpoints {
                        diff(&this.current, &next, &mut this.pending);
                        this.current = next;
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tower::discover::Discover;

    use super::*;
    use crate::discover::Publisher;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(([127, 0, 0, 1], port).into())
    }

    async fn next<D: Discover + Unpin>(d: &mut D) -> Change<D::Key, D::Service>
    where
        D::Error: std::fmt::Debug,
    {
        std::future::poll_fn(|cx| Pin::new(&mut *d).poll_discover(cx))
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn yields_inserts_updates_and_removes() {
        let p = Publisher::new();
        let mut d = p.subscribe().into_discover();
        p.publish(EndpointSet::new(vec![ep(1), ep(2)]).unwrap());
        assert!(matches!(next(&mut d).await, Change::Insert(a, _) if a.port() == 1));
        assert!(matches!(next(&mut d).await, Change::Insert(a, _) if a.port() == 2));

        p.publish(EndpointSet::new(vec![ep(2).weight(5), ep(3)]).unwrap());
        assert!(matches!(next(&mut d).await, Change::Remove(a) if a.port() == 1));
        assert!(
            matches!(next(&mut d).await, Change::Insert(a, e) if a.port() == 2 && e.weight == 5)
        );
        assert!(matches!(next(&mut d).await, Change::Insert(a, _) if a.port() == 3));

        drop(p);
        let end = std::future::poll_fn(|cx| Pin::new(&mut d).poll_discover(cx)).await;
        assert!(end.is_none());
    }
}
