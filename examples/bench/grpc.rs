//! The `grpc` scenario: tonic's own channels against the mesh channel, three tonic servers.

use std::{net::SocketAddr, sync::Arc};

use mesh::{
    core::{Endpoint, Mesh, discover::StaticSource},
    tonic::{GrpcClient, MeshChannel},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Channel};

use crate::{
    Variant,
    load::Target,
    report::{Check, Rounds, Row, find, rps_ratio},
    scenarios::{no_external, per_run},
    sidecar::{Sidecar, envoy::Proto},
};

mod bookinfo {
    tonic::include_proto!("bookinfo.v1");
}

use bookinfo::{
    Review, ReviewsReply, ReviewsRequest,
    reviews_client::ReviewsClient,
    reviews_server::{Reviews, ReviewsServer},
};

/// Answers `GetReviews` with one small review at once; the streaming methods are not used here.
#[derive(Clone)]
struct Small;

#[tonic::async_trait]
impl Reviews for Small {
    async fn get_reviews(
        &self,
        req: Request<ReviewsRequest>,
    ) -> Result<Response<ReviewsReply>, Status> {
        Ok(Response::new(ReviewsReply {
            product_id: req.get_ref().product_id,
            reviews: vec![Review {
                reviewer: "bench".into(),
                text: "fine".into(),
                stars: 4,
                color: String::new(),
            }],
            served_by: String::new(),
        }))
    }

    type WatchReviewsStream = tokio_stream::Empty<Result<Review, Status>>;

    async fn watch_reviews(
        &self,
        _req: Request<ReviewsRequest>,
    ) -> Result<Response<Self::WatchReviewsStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }

    type ModerateStream = tokio_stream::Empty<Result<Review, Status>>;

    async fn moderate(
        &self,
        _req: Request<tonic::Streaming<Review>>,
    ) -> Result<Response<Self::ModerateStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }
}

/// A plain tonic server on loopback (no mesh layers: every variant talks to the same servers).
async fn server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ReviewsServer::new(Small))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    (addr, task)
}

/// A generated client over some channel.
struct Client<T>(ReviewsClient<T>);

impl<T> Target for Client<T>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Future: Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let mut client = self.0.clone();
        async move {
            client
                .get_reviews(ReviewsRequest { product_id: 7 })
                .await
                .map(drop)
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    }
}

pub struct Grpc {
    _servers: Vec<tokio::task::JoinHandle<()>>,
    _envoy: Arc<Sidecar>,
    pub variants: Vec<Variant>,
}

impl Drop for Grpc {
    fn drop(&mut self) {
        for s in &self._servers {
            s.abort();
        }
    }
}

impl Grpc {
    pub async fn new() -> Result<Self, String> {
        let mut addrs = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (addr, task) = server().await;
            addrs.push(addr);
            servers.push(task);
        }
        let uris: Arc<Vec<String>> =
            Arc::new(addrs.iter().map(|a| format!("http://{a}")).collect());
        let (first, all) = (uris.clone(), uris);
        // gRPC through one Envoy hop (HTTP/2 in, HTTP/2 out) to the first server, as raw-tonic.
        let envoy = Arc::new(Sidecar::envoy_1hop(addrs[0], Proto::H2)?);
        let (hop_uri, hop_cpu) = (format!("http://{}", envoy.listen), envoy.clone());
        let variants = vec![
            per_run(
                "raw-tonic",
                move || {
                    let channel = Channel::from_shared(first[0].clone())
                        .expect("valid URI")
                        .connect_lazy();
                    Client(ReviewsClient::new(channel))
                },
                Arc::new(no_external),
            ),
            per_run(
                "tonic-balance",
                move || {
                    let endpoints = all
                        .iter()
                        .map(|u| Channel::from_shared(u.clone()).expect("valid URI"));
                    Client(ReviewsClient::new(Channel::balance_list(endpoints)))
                },
                Arc::new(no_external),
            ),
            per_run(
                "mesh",
                move || {
                    let mesh = Mesh::builder()
                        .service(
                            "reviews.bench:9080",
                            StaticSource::new(addrs.iter().map(|a| Endpoint::new(*a)).collect())
                                .expect("distinct endpoints"),
                        )
                        .without_dns_fallback()
                        .build()
                        .expect("valid bench mesh");
                    let channel: MeshChannel = GrpcClient::new(mesh)
                        .channel("reviews.bench:9080")
                        .expect("a configured service");
                    Client(ReviewsClient::new(channel))
                },
                Arc::new(no_external),
            ),
            per_run(
                "envoy-h2",
                move || {
                    let channel = Channel::from_shared(hop_uri.clone())
                        .expect("valid URI")
                        .connect_lazy();
                    Client(ReviewsClient::new(channel))
                },
                Arc::new(move || hop_cpu.cpu()),
            ),
        ];
        Ok(Self {
            _servers: servers,
            _envoy: envoy,
            variants,
        })
    }

    pub fn checks(rows: &[Row]) -> Vec<Check> {
        let mut out = Vec::new();
        let (Some(raw), Some(balance), Some(mesh)) = (
            find(rows, "raw-tonic", 32),
            find(rows, "tonic-balance", 32),
            find(rows, "mesh", 32),
        ) else {
            return out;
        };
        out.push(rps_ratio(
            "mesh >= 0.90x raw-tonic rps at c32",
            mesh,
            raw,
            0.90,
            3,
            Rounds::Median,
        ));
        out.push(rps_ratio(
            "mesh >= 1.05x tonic-balance rps at c32, every round",
            mesh,
            balance,
            1.05,
            3,
            Rounds::Every,
        ));
        if let Some(hop) = find(rows, "envoy-h2", 32) {
            out.push(rps_ratio(
                "mesh >= 3x the envoy-h2 hop's rps at c32",
                mesh,
                hop,
                3.0,
                2,
                Rounds::Median,
            ));
        }
        out
    }
}
