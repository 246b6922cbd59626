//! The minimal hyper backend every variant talks to: HTTP/1.1 keep-alive, `GET /` → `200 ok`,
//! optionally after a fixed delay.
//!
//! Delays are kept by a dedicated timer thread, not by tokio's timer: tokio's wheel has 1 ms
//! resolution and fires when a worker parks (rounded up to the next millisecond again), which
//! adds ~2 ms to every sleep; a "1 ms vs 10 ms" backend pair would really be "3 ms vs 12 ms",
//! only 4x apart. The timer thread waits with `recv_timeout` (a futex with a nanosecond timeout)
//! and is accurate to tens of microseconds, so 10x slower is 10x slower.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    convert::Infallible,
    net::SocketAddr,
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinSet};

pub struct Backend {
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a backend answers: after `delay`; a `slow_ratio` share of requests after `slow_delay`
/// instead; a `fail_ratio` share with 503.
#[derive(Clone, Copy, Debug, Default)]
pub struct Behavior {
    pub delay: Duration,
    pub slow_ratio: f64,
    pub slow_delay: Duration,
    pub fail_ratio: f64,
}

pub async fn start(delay: Duration) -> Backend {
    start_with(Behavior {
        delay,
        ..Behavior::default()
    })
    .await
}

pub async fn start_with(behavior: Behavior) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    serve(listener, behavior)
}

/// A backend answering on `listener` (bound by the caller: the `scale` scenario's listens on
/// every loopback address).
pub fn serve(listener: TcpListener, behavior: Behavior) -> Backend {
    let addr = listener.local_addr().expect("local addr");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = hits.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Reap finished connections: the scale scenario opens tens of thousands.
            while conns.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let counter = counter.clone();
            conns.spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let b = behavior;
                    async move {
                        let slow = b.slow_ratio > 0.0 && fastrand::f64() < b.slow_ratio;
                        let delay = if slow { b.slow_delay } else { b.delay };
                        if !delay.is_zero() {
                            precise_sleep(delay).await;
                        }
                        let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                        if b.fail_ratio > 0.0 && fastrand::f64() < b.fail_ratio {
                            *rsp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(rsp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, hits, task }
}

/// Completes `d` from now, to within tens of microseconds.
async fn precise_sleep(d: Duration) {
    static TIMER: OnceLock<mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>> =
        OnceLock::new();
    let tx = TIMER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Instant, tokio::sync::oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("bench-delay".into())
            .spawn(move || {
                // Deadlines in a min-heap, with a sequence number to find their wakers.
                let mut heap: BinaryHeap<(Reverse<Instant>, u64)> = BinaryHeap::new();
                let mut wakers = std::collections::HashMap::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while heap.peek().is_some_and(|(Reverse(at), _)| *at <= now) {
                        if let Some((_, id)) = heap.pop()
                            && let Some(wake) = wakers.remove(&id)
                        {
                            let _: Result<(), ()> = tokio::sync::oneshot::Sender::send(wake, ());
                        }
                    }
                    let next = match heap.peek() {
                        Some((Reverse(at), _)) => {
                            rx.recv_timeout(at.saturating_duration_since(now))
                        }
                        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                    };
                    match next {
                        Ok((at, wake)) => {
                            seq += 1;
                            heap.push((Reverse(at), seq));
                            wakers.insert(seq, wake);
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("spawn the delay thread");
        tx
    });
    let (wake, done) = tokio::sync::oneshot::channel();
    if tx.send((Instant::now() + d, wake)).is_ok() {
        let _ = done.await;
    }
}
