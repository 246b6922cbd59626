//! Endpoints of the ServiceEntries in use: one source per host and port, kept up to date when
//! the documents change.

use std::{collections::HashMap, sync::Mutex};

use super::{Mesh, ResolveError};
use crate::{
    ServiceName,
    config::{ConfigSet, Resolution, ServiceEntry, ServiceEntryPort},
    discover::{DnsSource, EndpointSource, StaticSource, Subscription},
};

/// The sources of the ServiceEntry hosts requests went to.
#[derive(Default)]
pub(super) struct ServiceEntrySources {
    sources: Mutex<HashMap<ServiceName, Source>>,
}

enum Source {
    /// `STATIC` (and `DNS` with IP endpoints): replaced in place on every change.
    Static(StaticSource),
    /// `DNS` with a name to resolve.
    Dns(DnsSource),
}

impl ServiceEntrySources {
    /// The endpoints of `name` as `se` declares them on `port`; `None` when the entry lists
    /// none to use (`NONE` resolution: the host itself is resolved as for any name).
    pub(super) fn subscribe(
        &self,
        name: &ServiceName,
        se: &ServiceEntry,
        port: &ServiceEntryPort,
        mesh: &Mesh,
    ) -> Result<Option<Subscription>, ResolveError> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sources.get(name) {
            return Ok(Some(match s {
                Source::Static(s) => s.subscribe(name),
                Source::Dns(s) => s.subscribe(name),
            }));
        }
        let named = se
            .endpoints
            .iter()
            .find(|e| e.address.parse::<std::net::IpAddr>().is_err());
        let source = match (&se.resolution, named) {
            (Resolution::None, _) => return Ok(None),
            (Resolution::Dns, Some(e)) => {
                let p = e
                    .ports
                    .get(&port.name)
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number);
                Source::Dns(DnsSource::host(mesh.resolver(name)?, e.address.as_str(), p))
            }
            (Resolution::Dns, None) if se.endpoints.is_empty() => {
                let p = port.target_port.unwrap_or(port.number);
                Source::Dns(DnsSource::host(mesh.resolver(name)?, name.host(), p))
            }
            _ => match StaticSource::new(se.static_endpoints(port)) {
                Ok(s) => Source::Static(s),
                Err(e) => {
                    // Validation rejects duplicate addresses; keep the mesh usable anyway.
                    tracing::warn!(service = %name, error = %e, "ServiceEntry endpoints rejected");
                    StaticSource::new(Vec::new())
                        .map(Source::Static)
                        .map_err(|_| ResolveError::Unknown(name.clone()))?
                }
            },
        };
        tracing::debug!(service = %name, entry = %se.source, "endpoints from a ServiceEntry");
        let sub = match &source {
            Source::Static(s) => s.subscribe(name),
            Source::Dns(s) => s.subscribe(name),
        };
        sources.insert(name.clone(), source);
        Ok(Some(sub))
    }

    /// Applies a new document set: static entries get their new endpoints (none when the
    /// entry is gone).
    pub(super) fn update(&self, set: &ConfigSet) {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        for (name, source) in sources.iter() {
            let Source::Static(s) = source else { continue };
            let endpoints = set
                .service_entry(name.host(), name.port())
                .map(|(se, port)| se.static_endpoints(port))
                .unwrap_or_default();
            if let Err(e) = s.update(endpoints) {
                tracing::warn!(service = %name, error = %e, "ServiceEntry endpoints rejected");
            }
        }
    }
}
