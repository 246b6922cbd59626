//! HTTP/2 connections of one endpoint, held directly: hyper's `SendRequest` behind a lock,
//! instead of a hyper-util pooled client.
//!
//! An HTTP/2 connection multiplexes every request, so an endpoint needs no pool: it needs its
//! connection, and a new one when that one closes. hyper-util's client does more per request
//! (a pool checkout keyed by scheme and authority, its own `Arc`s and boxed futures), about
//! 900 instructions per gRPC call under callgrind, which kept mesh's channel behind tonic's
//! own balancer. This holds each connection's sender and sends on it; like tonic's channel and
//! Linkerd's balancer endpoints, the connection stays open while the endpoint is in
//! discovery (the endpoint is dropped with its connection when discovery removes it).
//!
//! Connecting happens on the first request and again after the connection closes (the peer
//! went away, `GOAWAY`): one request connects while the others wait for it, bounded by the
//! connect timeout of the [`EndpointConnector`].

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use http::{Request, Response, Uri};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::{
    RequestBody,
    connect::{BoxError, EndpointConnector},
};

/// Why a request on an endpoint's own connection failed.
#[derive(Debug)]
pub(crate) enum H2Failure {
    /// No connection could be made (connect, TLS or HTTP/2 handshake): the request was not
    /// sent.
    Connect(BoxError),
    /// The request failed on the connection.
    Request(hyper::Error),
}

pub(crate) type H2Future =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, H2Failure>> + Send>>;

/// One HTTP/2 connection of an endpoint (an endpoint may keep several).
pub(crate) struct H2Connection<B> {
    /// The live connection's sender; `None` before the first connect.
    sender: Mutex<Option<SendRequest<B>>>,
    /// Held by the one request that connects; the others wait on it.
    connecting: tokio::sync::Mutex<()>,
    connector: EndpointConnector,
}

impl<B: RequestBody> H2Connection<B> {
    pub(crate) fn new(connector: EndpointConnector) -> Arc<Self> {
        Arc::new(Self {
            sender: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            connector,
        })
    }

    /// Sends `req` on the live connection, or connects first.
    pub(crate) fn send(self: &Arc<Self>, req: Request<B>) -> H2Future {
        let req = {
            let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
            match sender.as_mut() {
                Some(s) if s.is_ready() => {
                    let fut = s.send_request(req);
                    return Box::pin(async move { fut.await.map_err(H2Failure::Request) });
                }
                _ => req,
            }
        };
        let this = self.clone();
        Box::pin(async move {
            let mut sender = this.connected().await?;
            sender.send_request(req).await.map_err(H2Failure::Request)
        })
    }

    /// A ready sender: the live connection's, or a new connection's (one request connects,
    /// the others wait for it and use it).
    async fn connected(&self) -> Result<SendRequest<B>, H2Failure> {
        let _connecting = self.connecting.lock().await;
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let stream = self
            .connector
            .clone()
            .call(Uri::from_static("/"))
            .await
            .map_err(H2Failure::Connect)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(stream)
            .await
            .map_err(|e| H2Failure::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection closed with an error");
            }
        });
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    fn live(&self) -> Option<SendRequest<B>> {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        sender.as_ref().filter(|s| s.is_ready()).cloned()
    }
}
