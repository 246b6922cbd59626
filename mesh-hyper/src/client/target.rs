//! A handle on one destination of a client.

use std::{fmt, sync::Arc};

use http::{Request, Uri, uri::Scheme};
use mesh_core::{
    ServiceName,
    telemetry::{DestinationSnapshot, DestinationSource},
};

use super::{Dialect, MeshClient, RequestBody, ResponseFuture, destination::Dest};
use crate::{Error, HttpClassifier};

/// A handle on one destination of a [`MeshClient`] (see [`MeshClient::target`]). Cheap to clone.
///
/// It keeps its client alive: a target (or a `MeshChannel` made from one) whose client was
/// dropped still follows configuration changes.
pub struct Target<B, D = HttpClassifier> {
    pub(super) dest: Arc<Dest<B, D>>,
    pub(super) authority: http::uri::Authority,
    /// The destination rebuilds its routes through its client, which it only refers to weakly
    /// (the client owns its destinations).
    pub(super) _client: MeshClient<B, D>,
}

impl<B, D> Clone for Target<B, D> {
    fn clone(&self) -> Self {
        Self {
            dest: self.dest.clone(),
            authority: self.authority.clone(),
            _client: self._client.clone(),
        }
    }
}

impl<B, D> Target<B, D>
where
    B: RequestBody,
    D: Dialect,
{
    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.dest.name
    }

    /// Sends a request to this destination. A request in origin form (`/path`) gets the
    /// target's authority; an absolute URI is sent as it is (its authority is not routed by).
    pub fn request(&self, mut req: Request<B>) -> ResponseFuture<B, D> {
        if req.uri().authority().is_none() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(self.authority.clone());
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            match Uri::from_parts(parts) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return ResponseFuture::failed(Error::MissingAuthority),
            }
        }
        MeshClient::send(&self.dest, req)
    }

    /// Counters and endpoint states of this destination.
    pub fn stats(&self) -> DestinationSnapshot {
        self.dest.snapshot()
    }
}

impl<B, D> fmt::Debug for Target<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("service", &self.dest.name)
            .finish_non_exhaustive()
    }
}
