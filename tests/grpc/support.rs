//! A real tonic Reviews server on loopback whose behaviour the tests steer.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh::{
    core::{authz::Authorizer, telemetry::Telemetry},
    tonic::{
        MeshChannel,
        health::{HealthReporter, health_service},
        server::{Acceptor, AuthzLayer, DeadlineLayer, MetricsLayer, TraceLayer, incoming},
    },
};
use tokio::sync::Notify;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceBuilder;

pub mod bookinfo {
    tonic::include_proto!("bookinfo.v1");
}

use bookinfo::{
    Review, ReviewsReply, ReviewsRequest,
    reviews_client::ReviewsClient,
    reviews_server::{Reviews, ReviewsServer},
};

/// How `GetReviews` answers.
pub const OK: u8 = 0;
pub const UNAVAILABLE: u8 = 1;
pub const INVALID_ARGUMENT: u8 = 2;

#[derive(Clone)]
pub struct Behaviour {
    pub name: String,
    pub mode: Arc<AtomicU8>,
    pub hits: Arc<AtomicUsize>,
    /// The `grpc-timeout` of the last call, as received.
    pub seen_timeout: Arc<Mutex<Option<String>>>,
    /// The `traceparent` of the last call, as received.
    pub seen_traceparent: Arc<Mutex<Option<String>>>,
    /// When set, `GetReviews` first calls this channel (a middle hop), then answers.
    pub downstream: Option<MeshChannel>,
    /// `WatchReviews` sends one review, waits for this (if set), then sends a second; in
    /// mode `UNAVAILABLE` it fails after the first (the status in the trailers).
    pub release: Option<Arc<Notify>>,
}

impl Behaviour {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            mode: Arc::new(AtomicU8::new(OK)),
            hits: Arc::new(AtomicUsize::new(0)),
            seen_timeout: Arc::new(Mutex::new(None)),
            seen_traceparent: Arc::new(Mutex::new(None)),
            downstream: None,
            release: None,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn review(name: &str, text: &str) -> Review {
    Review {
        reviewer: name.to_owned(),
        text: text.to_owned(),
        stars: 5,
        color: String::new(),
    }
}

#[tonic::async_trait]
impl Reviews for Behaviour {
    async fn get_reviews(
        &self,
        req: Request<ReviewsRequest>,
    ) -> Result<Response<ReviewsReply>, Status> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        *self.seen_timeout.lock().unwrap() = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *self.seen_traceparent.lock().unwrap() = req
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match self.mode.load(Ordering::SeqCst) {
            UNAVAILABLE => return Err(Status::unavailable(format!("{} is draining", self.name))),
            INVALID_ARGUMENT => {
                return Err(Status::invalid_argument("product_id must be positive"));
            }
            _ => {}
        }
        let product_id = req.get_ref().product_id;
        if let Some(downstream) = &self.downstream {
            // A middle hop: some work, then the downstream call, made with no deadline code.
            tokio::time::sleep(Duration::from_millis(50)).await;
            ReviewsClient::new(downstream.clone())
                .get_reviews(ReviewsRequest { product_id })
                .await?;
        }
        Ok(Response::new(ReviewsReply {
            product_id,
            reviews: vec![review(&self.name, "great")],
            served_by: self.name.clone(),
        }))
    }

    type WatchReviewsStream = Pin<Box<dyn Stream<Item = Result<Review, Status>> + Send>>;

    async fn watch_reviews(
        &self,
        _req: Request<ReviewsRequest>,
    ) -> Result<Response<Self::WatchReviewsStream>, Status> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let (name, release) = (self.name.clone(), self.release.clone());
        let fail = self.mode.load(Ordering::SeqCst) == UNAVAILABLE;
        let stream = async_stream(name, release, fail);
        Ok(Response::new(Box::pin(stream)))
    }

    type ModerateStream = Pin<Box<dyn Stream<Item = Result<Review, Status>> + Send>>;

    async fn moderate(
        &self,
        req: Request<Streaming<Review>>,
    ) -> Result<Response<Self::ModerateStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Ok(Some(mut r)) = inbound.message().await {
                r.text = format!("moderated: {}", r.text);
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// One review now, the second once `release` is notified (or an error, if `fail`).
fn async_stream(
    name: String,
    release: Option<Arc<Notify>>,
    fail: bool,
) -> impl Stream<Item = Result<Review, Status>> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        if tx.send(Ok(review(&name, "first"))).await.is_err() {
            return;
        }
        if fail {
            let _ = tx.send(Err(Status::unavailable("stream broke"))).await;
            return;
        }
        if let Some(release) = release {
            release.notified().await;
        }
        let _ = tx.send(Ok(review(&name, "second"))).await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub behaviour: Behaviour,
    pub health: HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Reviews server (plus grpc.health.v1) on a free loopback port, behind the mesh's
/// server layers.
pub async fn start(behaviour: Behaviour, acceptor: Acceptor, authz: Option<Authorizer>) -> Server {
    start_with(behaviour, acceptor, authz, Telemetry::without_registry()).await
}

/// [`start`], with the server's inbound metrics recorded into `telemetry`.
pub async fn start_with(
    behaviour: Behaviour,
    acceptor: Acceptor,
    authz: Option<Authorizer>,
    telemetry: Telemetry,
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, health_svc) = health_service();
    let layers = ServiceBuilder::new()
        .layer(MetricsLayer::new(telemetry))
        .layer(TraceLayer::new())
        .layer(AuthzLayer::new(Arc::new(authz.unwrap_or_default())))
        .layer(DeadlineLayer::new())
        .into_inner();
    let svc = ReviewsServer::new(behaviour.clone());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .layer(layers)
            .add_service(health_svc)
            .add_service(svc)
            .serve_with_incoming(incoming(listener, acceptor))
            .await;
    });
    Server {
        addr,
        behaviour,
        health,
        task,
    }
}

pub async fn plain(name: &str) -> Server {
    start(Behaviour::named(name), Acceptor::plaintext(), None).await
}
