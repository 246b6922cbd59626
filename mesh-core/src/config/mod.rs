//! Configuration written as Istio's own resource documents, read unchanged.
//!
//! A team that `kubectl apply`s VirtualServices, DestinationRules, ServiceEntries,
//! AuthorizationPolicies and PeerAuthentications can point mesh at the same files (a file, or
//! a directory of them; `---`-separated YAML streams, JSON, `kind: List`), with
//! `apiVersion` `networking.istio.io/v1`, `v1beta1`, `v1alpha3` and `security.istio.io/v1`,
//! `v1beta1`. Reading goes in two steps, as linkerd2-proxy's client policy does:
//!
//! 1. [`wire`]: each document's `spec` is decoded into Istio's schema as serde types; a field
//!    Istio does not have (a typo) is an error naming it;
//! 2. conversion into mesh's validated types ([`crate::route::RouteTable`],
//!    [`DestinationRule`], [`ServiceEntry`], the [`Authorizer`](crate::authz::Authorizer) and
//!    [`PeerAuthn`]): durations, regexes, weights, retry conditions, subsets… are checked, and
//!    a field that Istio has but mesh does not implement is an error (a warning in lenient
//!    mode) — never silently ignored.
//!
//! The set is validated **whole** ([`load`]): every problem is reported at once, each naming
//! the file, the document (`VirtualService prod/reviews`) and the field path
//! (`spec.http[1].route[0].weight`); one error rejects the set, so a configuration either
//! applies entirely or not at all. [`ConfigStore`] keeps the live set behind an atomic swap and
//! reloads it when the files change (a rejected change keeps the set in force).
//!
//! ## Host names
//! As Istio resolves them ([`host`]): in a document only a dot-less name is short
//! (`reviews` in namespace `prod` is `reviews.prod.svc.cluster.local`; `reviews.prod` is
//! literal); a request to `reviews`, `reviews.prod`, `reviews.prod.svc` or the FQDN reaches the
//! service. Documents without `metadata.namespace` are in the workload's namespace (as
//! `kubectl apply` puts them in the current one).
//!
//! ## Where mesh is stricter than Istio (each reported with the field)
//! - a route naming a subset no DestinationRule defines is rejected (Istio: analyzer IST0101);
//! - two VirtualServices for one host are rejected (Istio: analyzer IST0109);
//! - `retries.attempts` above 10 is rejected;
//! - unimplemented fields are errors unless [`LoadOptions::lenient`]: `redirect`,
//!   `directResponse`, `delegate`, `corsPolicy`, `tcp`/`tls` routes, `statPrefix`,
//!   `retryOn` tokens `reset`, `retriable-headers`, `envoy-ratelimited`,
//!   `http3-post-connect-failure`, `retryRemoteLocalities`, `retryIgnorePreviousHosts: false`,
//!   `localityLbSetting`, `warmup`, `PASSTHROUGH`, `maglev`, `maxRequestsPerConnection`,
//!   `useClientProtocol`, `maxConcurrentStreams`, `http2KeepAlive`, `tcpKeepalive`,
//!   `maxConnectionDuration`, outlier `consecutiveGatewayErrors`, `minHealthPercent`,
//!   local-origin splitting, `outlierDetectionHttpErrorCodes`, TLS modes `SIMPLE`/`MUTUAL`,
//!   `tunnel`, `proxyProtocol`, `workloadSelector` on DestinationRules and ServiceEntries,
//!   ServiceEntry protocols other than HTTP/HTTP2/GRPC, unix-socket and several DNS-named
//!   endpoints, `DYNAMIC_DNS`, wildcard ServiceEntry hosts, `subjectAltNames`, endpoint
//!   `network`/`locality`; AuthorizationPolicy `CUSTOM`, `provider`, `targetRef(s)`,
//!   `requestPrincipals`, IP blocks, path templates, and conditions other than
//!   `request.headers[…]`, `source.principal`, `source.namespace`, `destination.port`; the
//!   kinds Sidecar, EnvoyFilter, WorkloadEntry, WorkloadGroup, RequestAuthentication,
//!   ProxyConfig, Telemetry, WasmPlugin.
//! - camelCase field names only (Istio's decoder also takes the proto's snake_case; the CRD
//!   and `kubectl` do not).
//!
//! ## Where mesh reads a field its own way
//! - outlier detection stays on (mesh's default) for hosts whose DestinationRule has no
//!   `outlierDetection` block (Istio programs none); with the block, success-rate ejection is
//!   off as in Istio, and `interval` is accepted but paces nothing (mesh judges every response);
//! - `retryOn` entries are trimmed (`"5xx, reset"`; Istio's validation rejects the space);
//! - `tcp.maxConnections` bounds requests in flight (one request per HTTP/1.1 connection);
//! - `retryBudget.minRetryConcurrency` becomes mesh's retries-per-second floor;
//! - a VirtualService route without `retries` takes the destination's default route policy
//!   (mesh's defaults: 2 retries on connect failures, refused streams and 502/503/504 for
//!   idempotent requests); Istio 1.24+ no longer retries 503 by default.
//!
//! ```
//! use mesh_core::config::{LoadOptions, Workload, load_texts};
//!
//! let docs = r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: reviews }
//! spec:
//!   hosts: [reviews]
//!   http:
//!   - route:
//!     - destination: { host: reviews, subset: v1 }
//!       weight: 90
//!     - destination: { host: reviews, subset: v2 }
//!       weight: 10
//! ---
//! apiVersion: networking.istio.io/v1
//! kind: DestinationRule
//! metadata: { name: reviews }
//! spec:
//!   host: reviews
//!   subsets:
//!   - { name: v1, labels: { version: v1 } }
//!   - { name: v2, labels: { version: v2 } }
//! "#;
//! let set = load_texts(&[("reviews.yaml", docs)], &Workload::default(), &LoadOptions::default()).unwrap();
//! let routes = set.route_table("reviews.default.svc.cluster.local").unwrap();
//! assert_eq!(routes.routes[0].backends.share(0), 0.9);
//! ```

mod convert;
mod error;
pub mod explain;
pub mod host;
mod load;
mod set;
mod store;
pub mod wire;

#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

pub use self::{
    convert::{
        destination_rule::{ConnectionPool, DestinationRule, SubsetPolicy, TrafficPolicy},
        security::{AuthzAction, AuthzPolicy, PeerAuthn},
        service_entry::{Resolution, ServiceEntry, ServiceEntryEndpoint, ServiceEntryPort},
        virtual_service::VirtualService,
    },
    error::{ConfigError, ConfigErrors, Severity},
    explain::{ExplainInput, Explanation, explain},
    host::Naming,
    load::{RawDocument, files, split_documents},
    set::ConfigSet,
    store::{ConfigStore, ConfigStoreStats, WeakConfigStore},
};

/// The workload reading the configuration: selectors (`sourceLabels`, `selector`) and
/// namespace-relative names are decided against it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// Its namespace, cluster domain and trust domain.
    pub naming: Naming,
    /// Its labels (`app: reviews`, `version: v2`).
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// A workload in `namespace` with `labels`.
    pub fn new<'a>(namespace: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            naming: Naming {
                namespace: namespace.to_owned(),
                ..Naming::default()
            },
            labels: labels
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// How documents are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Fields of Istio's schema that mesh does not implement are warnings (and ignored)
    /// instead of errors.
    pub lenient: bool,
}

/// Reads, validates and assembles the documents of `paths` (files, or directories of
/// `*.yaml`/`*.yml`/`*.json`). Every problem is reported; any error rejects the whole set.
pub fn load(
    paths: &[PathBuf],
    workload: &Workload,
    options: &LoadOptions,
) -> Result<ConfigSet, ConfigErrors> {
    load_cached(paths, workload, options, &mut FileCache::default())
}

/// The converted documents of files already read, by path and content hash: a reload
/// converts again only the files whose content changed (every document is still validated
/// against the whole set).
#[derive(Default)]
pub(crate) struct FileCache {
    files: std::collections::HashMap<PathBuf, (u64, std::sync::Arc<FileResult>)>,
}

/// One file's converted documents and problems.
pub(crate) struct FileResult {
    docs: Vec<set::Doc>,
    problems: Vec<ConfigError>,
}

/// [`load`] with a cache of the files' conversions.
pub(crate) fn load_cached(
    paths: &[PathBuf],
    workload: &Workload,
    options: &LoadOptions,
    cache: &mut FileCache,
) -> Result<ConfigSet, ConfigErrors> {
    let files = load::files(paths).map_err(|e| ConfigErrors(vec![e]))?;
    let mut texts = Vec::with_capacity(files.len());
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(t) => texts.push((f.clone(), t)),
            Err(e) => {
                return Err(ConfigErrors(vec![ConfigError::error(
                    f,
                    "",
                    "",
                    format!("cannot read: {e}"),
                )]));
            }
        }
    }
    let refs: Vec<(&Path, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_path(), t.as_str()))
        .collect();
    load_from(&refs, workload, options, cache)
}

/// [`load`] for documents already in memory: `(name, text)` pairs (the name stands for the
/// file in errors).
pub fn load_texts(
    texts: &[(&str, &str)],
    workload: &Workload,
    options: &LoadOptions,
) -> Result<ConfigSet, ConfigErrors> {
    let refs: Vec<(&Path, &str)> = texts.iter().map(|(n, t)| (Path::new(*n), *t)).collect();
    load_from(&refs, workload, options, &mut FileCache::default())
}

/// Loads document sets held in memory, again and again, converting only the texts that
/// changed since the previous load: for a source that keeps one document per record (etcd).
/// Every load is still validated whole.
pub struct TextLoader {
    workload: Workload,
    options: LoadOptions,
    cache: FileCache,
}

impl TextLoader {
    /// A loader reading for `workload`.
    pub fn new(workload: Workload, options: LoadOptions) -> Self {
        Self {
            workload,
            options,
            cache: FileCache::default(),
        }
    }

    /// The workload the documents are read for.
    pub fn workload(&self) -> &Workload {
        &self.workload
    }

    /// Reads, validates and assembles `(name, text)` pairs (the name stands for the file in
    /// errors; a text starting with `{` is read as JSON, anything else as YAML).
    pub fn load(&mut self, texts: &[(&str, &str)]) -> Result<ConfigSet, ConfigErrors> {
        let refs: Vec<(&Path, &str)> = texts.iter().map(|(n, t)| (Path::new(*n), *t)).collect();
        load_from(&refs, &self.workload, &self.options, &mut self.cache)
    }
}

impl fmt::Debug for TextLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextLoader")
            .field("workload", &self.workload)
            .field("cached", &self.cache.files.len())
            .finish()
    }
}

fn load_from(
    texts: &[(&Path, &str)],
    workload: &Workload,
    options: &LoadOptions,
    cache: &mut FileCache,
) -> Result<ConfigSet, ConfigErrors> {
    let mut problems = Vec::new();
    let mut converted = set::Converted::default();
    let mut hash = Fnv::default();
    let mut seen = std::collections::HashSet::new();
    for (path, text) in texts {
        // The text is hashed once: the set's version hashes each file's name and hash.
        let mut file_hash = Fnv::default();
        file_hash.write(text.as_bytes());
        hash.write(path.to_string_lossy().as_bytes());
        hash.write(&[0]);
        hash.write(&file_hash.0.to_le_bytes());
        seen.insert(path.to_path_buf());
        let result = match cache.files.get(*path) {
            Some((h, r)) if *h == file_hash.0 => r.clone(),
            _ => {
                let (mut docs, mut file_problems) = (Vec::new(), Vec::new());
                load::convert_text(
                    path,
                    text,
                    workload,
                    options.lenient,
                    &mut file_problems,
                    &mut docs,
                );
                let r = std::sync::Arc::new(FileResult {
                    docs,
                    problems: file_problems,
                });
                cache
                    .files
                    .insert(path.to_path_buf(), (file_hash.0, r.clone()));
                r
            }
        };
        problems.extend(result.problems.iter().cloned());
        for (file, document, doc) in &result.docs {
            converted.push(file, document.clone(), doc.clone(), &mut problems);
        }
    }
    cache.files.retain(|p, _| seen.contains(p));
    let sources = texts.iter().map(|(p, _)| p.display().to_string()).collect();
    let set = set::assemble(converted, workload, &mut problems, hash.hex(), sources);
    if problems.iter().any(ConfigError::is_error) {
        return Err(ConfigErrors(problems));
    }
    Ok(set)
}

/// FNV-1a, 64 bits: a stable content hash for the configuration's version.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}
