//! Building a destination's routing from the documents in force: routes, the backends they
//! name (shared across destinations and kept across changes while their policy holds), and
//! the feeds those backends draw endpoints from.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use mesh_core::{
    ServiceName,
    balance::Selector,
    config::ConfigSet,
    extensions::Routed,
    retry::{RetryLayer, RetryShare},
    route::{BackendRef, HttpRoute, RouteTable},
    timeout::TimeoutLayer,
};

use super::{
    Dialect, Inner, RequestBody,
    backend::{Backend, Feed},
    destination::Dest,
    mirror::Mirrors,
    router::{RouteRt, Routing, replay_bytes},
};
use crate::Error;

/// Backends by (service, subset).
pub(super) type Backends<B, D> = HashMap<(ServiceName, Option<Arc<str>>), Weak<Backend<B, D>>>;

impl<B: RequestBody, D: Dialect> Routing<B, D> {
    /// A placeholder with no routes, replaced before any request sees it.
    pub(super) fn empty(service: ServiceName, mirrors: Arc<Mirrors>) -> Self {
        let host = service.host().to_owned();
        Self {
            generation: u64::MAX,
            service,
            table: Arc::new(RouteTable::new(&host, Vec::new())),
            routes: Box::new([]),
            mirrors,
        }
    }

    /// The same routes, marked as built for `generation` (a rebuild that failed keeps them).
    pub(super) fn with_generation(&self, generation: u64) -> Self {
        Self {
            generation,
            service: self.service.clone(),
            table: self.table.clone(),
            routes: self
                .routes
                .iter()
                .map(|r| RouteRt {
                    timeout: r.timeout.clone(),
                    retry: r.retry.clone(),
                    backends: r.backends.clone(),
                    mirrors: r.mirrors.clone(),
                    replay_bytes: r.replay_bytes,
                    routed: r.routed.clone(),
                })
                .collect(),
            mirrors: self.mirrors.clone(),
        }
    }
}

impl<B: RequestBody, D: Dialect> Inner<B, D> {
    /// The routing of `dest` for configuration `generation`.
    pub(super) fn routing(
        &self,
        dest: &Dest<B, D>,
        generation: u64,
    ) -> Result<Routing<B, D>, Error> {
        let set = self.mesh.config().map(|c| c.current());
        let name = &dest.name;
        let table = match set.as_deref().and_then(|s| s.route_table(name.host())) {
            Some(t) => Arc::new(t.clone()),
            // No VirtualService: one catch-all route to the service itself.
            None => Arc::new(RouteTable::new(
                name.host(),
                vec![HttpRoute::to(
                    "default",
                    BackendRef::new(name.host(), Some(name.port()), None),
                )],
            )),
        };
        let share = self.retry_share(dest, set.as_deref())?;
        let mut routes = Vec::with_capacity(table.routes.len());
        for route in &table.routes {
            let policy = route.overrides.effective(&dest.base.route);
            let retry = RetryLayer::with_share(
                name.clone(),
                policy.retries,
                self.dialect.clone(),
                share.clone(),
            )
            .map_err(|error| Error::Policy {
                service: name.clone(),
                error: error.within(&format!("{}.retries", route.id)),
            })?;
            let backends = route
                .backends
                .backends()
                .iter()
                .map(|w| self.backend(&w.backend, name, set.as_deref()))
                .collect::<Result<Vec<_>, _>>()?;
            let mirrors = route
                .mirrors
                .iter()
                .map(|m| {
                    Ok((
                        m.percentage,
                        self.backend(&m.backend, name, set.as_deref())?,
                    ))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let routed = backends
                .iter()
                .map(|b| Routed::new(route.label(), b.service.as_str(), b.subset.as_deref()))
                .collect();
            routes.push(RouteRt {
                routed,
                timeout: TimeoutLayer::new(name.clone(), policy.timeout),
                replay_bytes: replay_bytes(route, &retry),
                retry,
                backends: backends.into(),
                mirrors: mirrors.into(),
            });
        }
        Ok(Routing {
            generation,
            service: name.clone(),
            table,
            routes: routes.into(),
            mirrors: dest.mirrors.clone(),
        })
    }

    /// The destination's retry budget: the one in force while its policy stays the same.
    fn retry_share(
        &self,
        dest: &Dest<B, D>,
        set: Option<&ConfigSet>,
    ) -> Result<Arc<RetryShare>, Error> {
        let name = &dest.name;
        let policy = match set.and_then(|s| s.destination_rule(name.host())) {
            Some(dr) => {
                dr.effective(&dest.base.destination, None, name.port())
                    .retry_budget
            }
            None => dest.base.destination.retry_budget.clone(),
        };
        let current = dest.retry_share.load();
        if current.0 == policy {
            return Ok(current.1.clone());
        }
        let share = RetryShare::new(&policy).map_err(|error| Error::Policy {
            service: name.clone(),
            error: error.within("retryBudget"),
        })?;
        dest.retry_share.store(Arc::new((policy, share.clone())));
        Ok(share)
    }

    /// The backend a route names: reused when it exists with the same policy, built otherwise.
    fn backend(
        &self,
        r: &BackendRef,
        from: &ServiceName,
        set: Option<&ConfigSet>,
    ) -> Result<Arc<Backend<B, D>>, Error> {
        let port = r.port.unwrap_or(from.port());
        let authority = if r.host.contains(':') {
            format!("[{}]:{port}", r.host)
        } else {
            format!("{}:{port}", r.host)
        };
        let service = ServiceName::parse(&authority).map_err(|e| Error::Resolve(e.into()))?;
        let feed = self.feed(&service)?;
        let dr = set.and_then(|s| s.destination_rule(&r.host));
        let policy = match dr {
            Some(dr) => dr.effective(&feed.base.destination, r.subset.as_deref(), port),
            None => feed.base.destination.clone(),
        };
        let selector: Selector = match (&r.subset, dr) {
            (Some(s), Some(dr)) => match dr.subset(s) {
                Some(sub) => sub.labels.clone(),
                None => {
                    // Validation rejects routes to unknown subsets; a subset can only go
                    // missing if a DestinationRule of another namespace won. Say so.
                    return Err(Error::Policy {
                        service: service.clone(),
                        error: mesh_core::PolicyError::new(
                            "subset",
                            format!("no DestinationRule defines subset {s:?}"),
                        ),
                    });
                }
            },
            (Some(s), None) => {
                return Err(Error::Policy {
                    service: service.clone(),
                    error: mesh_core::PolicyError::new(
                        "subset",
                        format!("no DestinationRule defines subset {s:?}"),
                    ),
                });
            }
            (None, _) => Selector::from(Vec::new()),
        };
        let key = (feed.name().clone(), r.subset.clone());
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = backends.get(&key).and_then(Weak::upgrade) {
            if b.policy == policy && Arc::ptr_eq(&b.feed, &feed) {
                return Ok(b);
            }
        }
        let b = Arc::new(Backend::build(
            feed,
            r.subset.clone(),
            selector,
            policy,
            &self.settings,
            &self.dialect,
        )?);
        backends.retain(|_, w| w.strong_count() > 0);
        backends.insert(key, Arc::downgrade(&b));
        Ok(b)
    }

    /// The endpoint feed of a service: one per service, shared by its backends.
    pub(super) fn feed(&self, service: &ServiceName) -> Result<Arc<Feed>, Error> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = feeds.get(service).and_then(Weak::upgrade) {
            return Ok(f);
        }
        let dest = self.mesh.resolve_name(service.clone())?;
        let canonical = dest.name.clone();
        if canonical != *service {
            if let Some(f) = feeds.get(&canonical).and_then(Weak::upgrade) {
                feeds.insert(service.clone(), Arc::downgrade(&f));
                return Ok(f);
            }
        }
        let feed = Arc::new(Feed::new(dest, &self.settings, &self.dialect)?);
        feeds.retain(|_, w| w.strong_count() > 0);
        feeds.insert(service.clone(), Arc::downgrade(&feed));
        feeds.insert(canonical, Arc::downgrade(&feed));
        Ok(feed)
    }
}
