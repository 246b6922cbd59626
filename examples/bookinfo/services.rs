//! The Bookinfo services, as ordinary hyper and tonic programs that adopted the mesh: each
//! serves through mesh's server (mTLS as the PeerAuthentication in force says, authorization
//! by the AuthorizationPolicies selecting it) and calls the others through a mesh client.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming};
use mesh::{
    core::{Mesh, tls::TlsStore},
    hyper::{
        ClientSettings, MeshClient,
        server::{Acceptor, AuthzLayer, serve},
    },
    tonic::{GrpcClient, MeshChannel, server::incoming},
};
use tokio::net::TcpListener;
use tonic::{Status, metadata::MetadataValue};
use tower::Layer;

pub mod proto {
    tonic::include_proto!("bookinfo.v1");
}

use proto::{
    RatingsReply, RatingsRequest, Review, ReviewsReply, ReviewsRequest,
    ratings_client::RatingsClient,
    ratings_server::{Ratings, RatingsServer},
    reviews_client::ReviewsClient,
    reviews_server::{Reviews, ReviewsServer},
};

/// The port every Bookinfo service is known by (its endpoints listen wherever they were
/// started; the endpoints file maps one to the other).
pub const PORT: u16 = 9080;

/// What the demo reads of the services while they run: the counters of productpage's gRPC
/// client (retries, ejections of reviews endpoints) and of ratings' authorization (denials).
#[derive(Default)]
pub struct Probes {
    pub ratings_authz: std::sync::OnceLock<AuthzLayer>,
    pub productpage_grpc: std::sync::OnceLock<GrpcClient>,
}

/// A Bookinfo workload: its mesh (its labels, the documents, the registry) and its identity.
#[derive(Clone)]
pub struct Workload {
    pub mesh: Mesh,
    pub tls: TlsStore,
}

impl Workload {
    fn acceptor(&self) -> Acceptor {
        let config = self
            .mesh
            .config()
            .expect("Bookinfo workloads read Istio documents")
            .clone();
        Acceptor::from_config(self.tls.clone(), config, PORT).expect("the workload's certificate")
    }

    fn authz(&self) -> AuthzLayer {
        AuthzLayer::from_config(self.mesh.config().expect("documents").clone())
    }

    fn settings(&self) -> ClientSettings {
        ClientSettings {
            tls: Some(self.tls.clone()),
            ..ClientSettings::default()
        }
    }

    /// An HTTP client of this workload.
    pub fn http(&self) -> MeshClient<Empty<Bytes>> {
        MeshClient::with_settings(self.mesh.clone(), self.settings())
    }

    /// A gRPC client of this workload.
    pub fn grpc(&self) -> GrpcClient {
        GrpcClient::with_settings(self.mesh.clone(), self.settings())
    }
}

/// A channel to `target`, once the registry knows it (a registry such as etcd lists a
/// service only when one of its instances has registered): waits up to 30 s.
async fn channel(grpc: &GrpcClient, target: &str) -> Result<MeshChannel, Status> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match grpc.channel(target) {
            Ok(ch) => return Ok(ch),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// `details` (HTTP): the book's details as JSON.
pub async fn details(w: Workload, listener: TcpListener) {
    let app = tower::service_fn(|req: Request<Incoming>| async move {
        let id = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("0")
            .to_owned();
        let body = format!(
            r#"{{"id":{id},"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}}"#
        );
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
        )
    });
    serve(listener, w.acceptor(), w.authz().layer(app)).await;
}

/// `ratings` (gRPC): two reviewers' stars.
pub async fn ratings(w: Workload, listener: TcpListener, probes: Arc<Probes>) {
    struct Svc;
    #[tonic::async_trait]
    impl Ratings for Svc {
        async fn get_ratings(
            &self,
            req: tonic::Request<RatingsRequest>,
        ) -> Result<tonic::Response<RatingsReply>, Status> {
            let ratings =
                BTreeMap::from([("Reviewer1".to_owned(), 5), ("Reviewer2".to_owned(), 4)]);
            Ok(tonic::Response::new(RatingsReply {
                product_id: req.get_ref().product_id,
                ratings: ratings.into_iter().collect(),
            }))
        }
    }
    let authz = w.authz();
    let _ = probes.ratings_authz.set(authz.clone());
    let _ = tonic::transport::Server::builder()
        .layer(authz)
        .add_service(RatingsServer::new(Svc))
        .serve_with_incoming(incoming(listener, w.acceptor()))
        .await;
}

/// The `end-user` header of a call, to pass on (Istio's Bookinfo services forward it, so
/// that routes can match on it at every hop).
fn end_user<T>(req: &tonic::Request<T>) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    req.metadata().get("end-user").cloned()
}

/// `reviews` (gRPC), version v1 (no stars), v2 (black stars) or v3 (red stars); v2 and v3
/// ask `ratings`.
pub async fn reviews(w: Workload, listener: TcpListener, version: &'static str, instance: String) {
    struct Svc {
        version: &'static str,
        instance: String,
        ratings: Option<MeshChannel>,
    }
    #[tonic::async_trait]
    impl Reviews for Svc {
        async fn get_reviews(
            &self,
            req: tonic::Request<ReviewsRequest>,
        ) -> Result<tonic::Response<ReviewsReply>, Status> {
            let product_id = req.get_ref().product_id;
            let color = match self.version {
                "v2" => "black",
                "v3" => "red",
                _ => "",
            };
            let mut stars = BTreeMap::new();
            let mut unavailable = false;
            if let Some(ch) = &self.ratings {
                let mut call = tonic::Request::new(RatingsRequest { product_id });
                if let Some(u) = end_user(&req) {
                    call.metadata_mut().insert("end-user", u);
                }
                match RatingsClient::new(ch.clone()).get_ratings(call).await {
                    Ok(r) => stars = r.into_inner().ratings.into_iter().collect(),
                    Err(_) => unavailable = true,
                }
            }
            let review = |reviewer: &str, text: &str| Review {
                reviewer: reviewer.to_owned(),
                text: text.to_owned(),
                stars: if self.ratings.is_none() {
                    0
                } else if unavailable {
                    -1
                } else {
                    stars.get(reviewer).copied().unwrap_or(0)
                },
                color: if self.ratings.is_some() {
                    color.to_owned()
                } else {
                    String::new()
                },
            };
            Ok(tonic::Response::new(ReviewsReply {
                product_id,
                reviews: vec![
                    review(
                        "Reviewer1",
                        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
                    ),
                    review(
                        "Reviewer2",
                        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
                    ),
                ],
                served_by: format!("{}/{}", self.version, self.instance),
            }))
        }

        type WatchReviewsStream = tokio_stream::Empty<Result<Review, Status>>;
        async fn watch_reviews(
            &self,
            _: tonic::Request<ReviewsRequest>,
        ) -> Result<tonic::Response<Self::WatchReviewsStream>, Status> {
            Err(Status::unimplemented("Bookinfo's reviews has no stream"))
        }
        type ModerateStream = tokio_stream::Empty<Result<Review, Status>>;
        async fn moderate(
            &self,
            _: tonic::Request<tonic::Streaming<Review>>,
        ) -> Result<tonic::Response<Self::ModerateStream>, Status> {
            Err(Status::unimplemented("Bookinfo's reviews has no stream"))
        }
    }
    let ratings = match version {
        "v1" => None,
        _ => match channel(&w.grpc(), "ratings:9080").await {
            Ok(ch) => Some(ch),
            Err(e) => return eprintln!("reviews {version}: {e}"),
        },
    };
    let _ = tonic::transport::Server::builder()
        .layer(w.authz())
        .add_service(ReviewsServer::new(Svc {
            version,
            instance,
            ratings,
        }))
        .serve_with_incoming(incoming(listener, w.acceptor()))
        .await;
}

/// What `productpage` learned while answering: the headers the demo reads.
pub const X_REVIEWS: &str = "x-reviews-version";

/// `productpage` (HTTP): the HTML page, from `details` (HTTP) and `reviews` (gRPC). The user
/// is the `end-user` header (or a `user=` cookie), passed on to `reviews`.
pub async fn productpage(w: Workload, listener: TcpListener, probes: Arc<Probes>) {
    let http = w.http();
    let grpc = w.grpc();
    let reviews = match channel(&grpc, "reviews:9080").await {
        Ok(ch) => ch,
        Err(e) => return eprintln!("productpage: {e}"),
    };
    let _ = probes.productpage_grpc.set(grpc);
    let app = tower::service_fn(move |req: Request<Incoming>| {
        let (http, reviews) = (http.clone(), reviews.clone());
        async move { Ok::<_, Infallible>(page(&http, reviews, req).await) }
    });
    serve(listener, w.acceptor(), w.authz().layer(app)).await;
}

fn user_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(u) = req.headers().get("end-user").and_then(|v| v.to_str().ok()) {
        return Some(u.to_owned());
    }
    let cookies = req.headers().get(http::header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .find_map(|c| c.trim().strip_prefix("user="))
        .map(str::to_owned)
}

async fn page(
    http: &MeshClient<Empty<Bytes>>,
    reviews: MeshChannel,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let user = user_of(&req);
    let details = async {
        let rsp = http
            .request(
                Request::get("http://details:9080/details/0")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .ok()?;
        if !rsp.status().is_success() {
            return None;
        }
        let body = rsp.into_body().collect().await.ok()?.to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).ok()
    };
    let reviews = async {
        let mut call = tonic::Request::new(ReviewsRequest { product_id: 0 });
        if let Some(u) = user.as_deref().and_then(|u| u.parse().ok()) {
            call.metadata_mut().insert("end-user", u);
        }
        ReviewsClient::new(reviews)
            .get_reviews(call)
            .await
            .map(tonic::Response::into_inner)
    };
    let (details, reviews) = tokio::join!(details, reviews);
    let version = match &reviews {
        Ok(r) => r.served_by.split('/').next().unwrap_or("?").to_owned(),
        Err(_) => "unavailable".to_owned(),
    };
    let html = render(user.as_deref(), details.as_ref(), &reviews);
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header(X_REVIEWS, version)
        .header(
            "x-details",
            if details.is_some() {
                "ok"
            } else {
                "unavailable"
            },
        )
        .body(Full::new(Bytes::from(html)))
        .unwrap()
}

fn render(
    user: Option<&str>,
    details: Option<&serde_json::Value>,
    reviews: &Result<ReviewsReply, Status>,
) -> String {
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>Simple Bookstore App</title>\
         <style>body{font-family:sans-serif;margin:2em}.col{display:inline-block;vertical-align:top;width:45%;margin-right:3%}\
         .black{color:black}.red{color:#c00}blockquote{border-left:3px solid #ccc;margin:1em 0;padding-left:1em}</style></head><body>",
    );
    h.push_str(&format!(
        "<p>{}</p><h2>The Comedy of Errors</h2><p>Summary: Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays.</p>",
        user.map_or("Sign in".to_owned(), |u| format!("signed in as <b>{u}</b>"))
    ));
    h.push_str("<div class=col><h4>Book Details</h4>");
    match details {
        Some(d) => {
            for k in [
                "type",
                "pages",
                "publisher",
                "language",
                "ISBN-10",
                "ISBN-13",
            ] {
                h.push_str(&format!(
                    "<div><b>{k}</b>: {}</div>",
                    d[k].to_string().trim_matches('"')
                ));
            }
        }
        None => h.push_str("<p>Error fetching product details!</p>"),
    }
    h.push_str("</div><div class=col><h4>Book Reviews</h4>");
    match reviews {
        Ok(r) => {
            for rv in &r.reviews {
                let stars = match rv.stars {
                    -1 => "<i>Ratings service is currently unavailable</i>".to_owned(),
                    0 => String::new(),
                    n => format!(
                        "<span class={}>{}{}</span>",
                        rv.color,
                        "★".repeat(n as usize),
                        "☆".repeat(5 - n as usize)
                    ),
                };
                h.push_str(&format!(
                    "<blockquote><p>{}</p><small>{}</small><br>{stars}</blockquote>",
                    rv.text, rv.reviewer
                ));
            }
            h.push_str(&format!("<p><small>reviews-{}</small></p>", r.served_by));
        }
        Err(_) => {
            h.push_str("<p>Sorry, product reviews are currently unavailable for this book.</p>")
        }
    }
    h.push_str("</div></body></html>");
    h
}

/// The address a listener got.
pub fn addr(l: &std::net::TcpListener) -> SocketAddr {
    l.local_addr().expect("bound")
}
