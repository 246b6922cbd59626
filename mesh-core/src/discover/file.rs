//! A discovery source backed by a watched YAML or JSON file.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use notify::RecommendedWatcher;
use serde::Deserialize;

use super::{DiscoveryError, EndpointSource, Publisher, Subscription};
use crate::{
    ServiceName,
    endpoint::{DEFAULT_WEIGHT, Endpoint, EndpointSet, Labels},
    identity::SpiffeId,
};

/// Endpoints of several services read from a file, reloaded live when the file changes.
///
/// The file maps service names (`host:port`) to endpoint lists. YAML (any extension but
/// `.json`) or JSON:
///
/// ```yaml
/// services:
///   reviews.default:9080:
///     - address: 10.0.0.1:9080
///       labels: { version: v1 }
///     - address: 10.0.0.2:9080
///       weight: 3                       # default 1
///       labels: { version: v2, zone: a }
///       identity: spiffe://cluster.local/ns/default/sa/reviews   # optional
/// ```
///
/// The directory holding the file is watched with `notify` (so atomic renames and Kubernetes
/// ConfigMap symlink swaps are seen). Every change is re-read and validated as a whole: a valid
/// file replaces the endpoints of every service at once; an invalid one — unreadable, bad syntax,
/// unknown field, bad address, zero weight, duplicate address, bad SPIFFE ID — is rejected with
/// the path, the field and the reason (a `warn` event, [`FileSource::last_error`], and the
/// subscriptions' [`Snapshot::last_error`](super::Snapshot::last_error)), and the last good
/// endpoints stay in use. A service absent from a valid file has no endpoints.
///
/// `services` is required, and an empty file (nothing but whitespace and comments) is
/// rejected: a file caught half-written by a non-atomic rewrite, or emptied by mistake, must
/// not remove every endpoint. A file that really lists no services says `services: {}`. YAML
/// files are read with the limits of [`crate::yaml`] (10 million nodes, about 1.4 million
/// endpoints; JSON has no node limit).
///
/// ```no_run
/// use mesh_core::discover::{EndpointSource, FileSource};
///
/// let source = FileSource::open("endpoints.yaml")?;
/// let sub = source.subscribe(&"reviews.default:9080".parse()?);
/// println!("{:?}", sub.snapshot().endpoints);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct FileSource {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    /// Kept alive for as long as the source; dropping it stops the watch thread.
    _watcher: Option<RecommendedWatcher>,
}

#[derive(Default)]
struct State {
    services: BTreeMap<ServiceName, EndpointSet>,
    publishers: HashMap<ServiceName, Publisher>,
    last_error: Option<DiscoveryError>,
    reloads: u64,
    rejections: u64,
    /// The latest rejections, newest last (at most [`RECENT_ERRORS`]), kept after a good
    /// reload so that the debug snapshot can show what went wrong recently.
    recent_errors: std::collections::VecDeque<(std::time::SystemTime, DiscoveryError)>,
}

/// Rejections a file source remembers.
pub const RECENT_ERRORS: usize = 8;

/// The on-disk shape of an endpoints file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    /// Required: a file that lists no services must say so (`services: {}`), so that a file
    /// caught half-written, or emptied by mistake, never removes every endpoint.
    services: BTreeMap<String, Vec<EndpointDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointDoc {
    address: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    identity: Option<String>,
}

/// An endpoints document that parsed but is not valid: names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FileFormatError {
    /// Where in the document, e.g. `services["reviews:9080"][1].address`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl FileSource {
    /// Reads and validates `path`, then watches it. An invalid file is an error here (there is
    /// no last good set yet to fall back on).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DiscoveryError> {
        let path = path.as_ref().to_path_buf();
        let services = read(&path)?;
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let watcher = match start_watch(&path, weak.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    // The endpoints are valid; only live reload is lost. Say so loudly.
                    tracing::error!(path = %path.display(), error = %e,
                        "cannot watch endpoints file; changes will need FileSource::reload");
                    None
                }
            };
            Inner {
                path: path.clone(),
                state: Mutex::new(State {
                    services,
                    ..State::default()
                }),
                _watcher: watcher,
            }
        });
        tracing::info!(path = %path.display(), "endpoints file loaded");
        Ok(Self { inner })
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Re-reads the file now (the watcher does this on its own; this is for callers that know
    /// better, or platforms without file events). On error the last good endpoints stay.
    pub fn reload(&self) -> Result<(), DiscoveryError> {
        self.inner.reload()
    }

    /// The error of the latest reload, if it failed (cleared by the next good one).
    pub fn last_error(&self) -> Option<DiscoveryError> {
        self.inner.lock().last_error.clone()
    }

    /// The number of successful reloads since [`open`](Self::open).
    pub fn reloads(&self) -> u64 {
        self.inner.lock().reloads
    }

    /// The number of rejected reloads (invalid content; the last good endpoints stayed).
    pub fn rejections(&self) -> u64 {
        self.inner.lock().rejections
    }

    /// The latest rejections with their times, oldest first (at most [`RECENT_ERRORS`]).
    pub fn recent_errors(&self) -> Vec<(std::time::SystemTime, DiscoveryError)> {
        self.inner.lock().recent_errors.iter().cloned().collect()
    }

    /// The services the file names.
    pub fn services(&self) -> Vec<ServiceName> {
        self.inner.lock().services.keys().cloned().collect()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave State inconsistent (every update is a
        // whole-value replacement), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reload(&self) -> Result<(), DiscoveryError> {
        match read(&self.path) {
            Ok(services) => {
                let mut state = self.lock();
                let mut changed = 0;
                for (name, publisher) in &state.publishers {
                    let set = services.get(name).cloned().unwrap_or_default();
                    if publisher.publish(set) {
                        changed += 1;
                    }
                }
                state.services = services;
                state.last_error = None;
                state.reloads += 1;
                tracing::info!(path = %self.path.display(), services = state.services.len(),
                    changed, "endpoints file reloaded");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(error = %err, "endpoints file rejected; keeping the last good endpoints");
                let mut state = self.lock();
                for publisher in state.publishers.values() {
                    publisher.fail(err.clone());
                }
                state.last_error = Some(err.clone());
                state.rejections += 1;
                if state.recent_errors.len() == RECENT_ERRORS {
                    state.recent_errors.pop_front();
                }
                state
                    .recent_errors
                    .push_back((std::time::SystemTime::now(), err.clone()));
                Err(err)
            }
        }
    }
}

impl EndpointSource for FileSource {
    fn subscribe(&self, service: &ServiceName) -> Subscription {
        let mut state = self.inner.lock();
        if let Some(p) = state.publishers.get(service) {
            return p.subscribe();
        }
        let publisher = Publisher::new();
        publisher.publish(state.services.get(service).cloned().unwrap_or_default());
        if let Some(err) = &state.last_error {
            publisher.fail(err.clone());
        }
        let sub = publisher.subscribe();
        state.publishers.insert(service.clone(), publisher);
        sub
    }
}

impl super::Registry for FileSource {
    fn services(&self) -> Vec<ServiceName> {
        FileSource::services(self)
    }

    fn status(&self) -> super::status::ConfigSourceSnapshot {
        super::status::ConfigSourceSnapshot {
            digest: None,
            kind: "endpoints-file",
            path: self.path().display().to_string(),
            version: self.reloads() + 1,
            rejections: self.rejections(),
            last_error: self.last_error().map(|e| e.to_string()),
            recent_errors: self
                .recent_errors()
                .into_iter()
                .map(|(at, e)| super::status::ConfigError {
                    at_unix_secs: at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    error: e.to_string(),
                })
                .collect(),
            remote: None,
        }
    }
}

impl fmt::Debug for FileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn start_watch(path: &Path, inner: Weak<Inner>) -> notify::Result<RecommendedWatcher> {
    crate::fs_watch::watch_files(&[path], "mesh-endpoints-watch", move || {
        let Some(inner) = inner.upgrade() else {
            return false;
        };
        // Errors are logged and recorded by reload itself.
        let _ = inner.reload();
        true
    })
}

/// Reads and validates an endpoints file.
fn read(path: &Path) -> Result<BTreeMap<ServiceName, EndpointSet>, DiscoveryError> {
    let fail = |reason: String| DiscoveryError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if text.len() > crate::yaml::MAX_FILE_BYTES {
        return Err(fail(format!(
            "{} bytes is over the limit of {} bytes: split the services over several files",
            text.len(),
            crate::yaml::MAX_FILE_BYTES
        )));
    }
    if crate::yaml::is_blank(&text) {
        // An empty file is a write in progress (a non-atomic rewrite truncates first) or a
        // mistake; applying it would remove every endpoint of every service.
        return Err(fail(
            "the file is empty (no content but whitespace and comments); a file that lists \
             no services says so: `services: {}`"
                .into(),
        ));
    }
    let doc: FileDoc = if json {
        serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {e}")))?
    } else {
        crate::yaml::from_str(&text).map_err(|e| fail(yaml_error(&e)))?
    };
    validate(doc).map_err(|e| fail(e.to_string()))
}

/// A YAML error, with what to do when it is the parser's budget (see [`crate::yaml`]).
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    if text.contains("budget") {
        format!(
            "invalid YAML: {text} (the YAML limits are {} nodes and {} bytes per file: split the \
             services over several files, or write the file as JSON, which has no node limit)",
            crate::yaml::MAX_NODES,
            crate::yaml::MAX_FILE_BYTES
        )
    } else {
        format!("invalid YAML: {text}")
    }
}

fn validate(doc: FileDoc) -> Result<BTreeMap<ServiceName, EndpointSet>, FileFormatError> {
    let mut out = BTreeMap::new();
    for (key, endpoints) in doc.services {
        let at = |i: usize, field: &str| format!("services[{key:?}][{i}].{field}");
        let name = ServiceName::parse(&key).map_err(|e| FileFormatError {
            field: format!("services[{key:?}]"),
            reason: e.reason.to_owned(),
        })?;
        let mut list = Vec::with_capacity(endpoints.len());
        for (i, doc) in endpoints.into_iter().enumerate() {
            let addr: SocketAddr = doc.address.parse().map_err(|_| FileFormatError {
                field: at(i, "address"),
                reason: format!("{:?} is not an IP:port socket address", doc.address),
            })?;
            let weight = match doc.weight {
                Some(0) => {
                    return Err(FileFormatError {
                        field: at(i, "weight"),
                        reason: "must be at least 1 (remove the endpoint to send it nothing)"
                            .into(),
                    });
                }
                Some(w) => w,
                None => DEFAULT_WEIGHT,
            };
            let identity = doc
                .identity
                .map(|s| SpiffeId::parse(&s))
                .transpose()
                .map_err(|e| FileFormatError {
                    field: at(i, "identity"),
                    reason: e.to_string(),
                })?;
            list.push(Endpoint {
                addr,
                weight,
                labels: doc.labels.into_iter().collect::<Labels>(),
                identity,
            });
        }
        let set = EndpointSet::new(list).map_err(|e| FileFormatError {
            field: format!("services[{key:?}]"),
            reason: e.to_string(),
        })?;
        if out.insert(name.clone(), set).is_some() {
            return Err(FileFormatError {
                field: format!("services[{key:?}]"),
                reason: format!("service {name} is listed twice (names are case-insensitive)"),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_yaml_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = write(
            dir.path(),
            "e.yaml",
            "services:\n  Reviews:9080:\n    - address: 127.0.0.1:1\n      weight: 3\n      labels: {version: v2}\n      identity: spiffe://td/ns/a/sa/b\n",
        );
        let m = read(&yaml).unwrap();
        let set = &m[&"reviews:9080".parse().unwrap()];
        let ep = set.iter().next().unwrap();
        assert_eq!((ep.weight, ep.labels.get("version")), (3, Some("v2")));
        assert_eq!(
            ep.identity.as_ref().unwrap().as_str(),
            "spiffe://td/ns/a/sa/b"
        );

        let json = write(
            dir.path(),
            "e.json",
            r#"{"services": {"ratings:80": [{"address": "127.0.0.1:2"}]}}"#,
        );
        assert_eq!(read(&json).unwrap().len(), 1);
        let none = write(dir.path(), "none.yaml", "services: {}\n");
        assert!(read(&none).unwrap().is_empty());
        let none = write(dir.path(), "none.json", r#"{"services": {}}"#);
        assert!(read(&none).unwrap().is_empty());
    }

    #[test]
    fn empty_or_comment_only_files_are_rejected_not_read_as_no_services() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("empty.yaml", ""),
            ("blank.yaml", "  \n\n\t\n"),
            (
                "comments.yaml",
                "# services are generated\n# by the deploy tool\n",
            ),
            ("markers.yaml", "---\n...\n"),
            ("empty.json", ""),
            ("blank.json", " \n"),
        ] {
            let p = write(dir.path(), name, text);
            let err = read(&p).unwrap_err().to_string();
            assert!(err.contains("the file is empty"), "{name}: {err}");
        }
        // A document without `services` (or with a null one) is not "no services" either.
        for (name, text) in [
            ("map.yaml", "{}\n"),
            ("null.yaml", "services:\n"),
            ("map.json", "{}"),
        ] {
            let p = write(dir.path(), name, text);
            assert!(read(&p).is_err(), "{name} accepted");
        }
    }

    #[test]
    fn a_yaml_file_of_100k_endpoints_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("services:\n");
        for s in 0..10 {
            text.push_str(&format!("  svc{s}:80:\n"));
            for i in 0..10_000u32 {
                let [_, _, a, b] = i.to_be_bytes();
                text.push_str(&format!(
                    "    - address: 10.{s}.{a}.{b}:80\n      labels: {{version: v1, zone: z{}}}\n",
                    i % 3
                ));
            }
        }
        let p = write(dir.path(), "big.yaml", &text);
        let m = read(&p).unwrap();
        assert_eq!(m.values().map(EndpointSet::len).sum::<usize>(), 100_000);
    }

    #[test]
    fn rejects_invalid_documents_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "services:\n  r:80:\n    - address: nope\n",
                "services[\"r:80\"][0].address",
            ),
            (
                "services:\n  r:80:\n    - address: 127.0.0.1:1\n      weight: 0\n",
                "[0].weight",
            ),
            (
                "services:\n  r:80:\n    - address: 127.0.0.1:1\n    - address: 127.0.0.1:1\n",
                "listed twice",
            ),
            (
                "services:\n  r:\n    - address: 127.0.0.1:1\n",
                "needs its port",
            ),
            (
                "services:\n  r:80:\n    - address: 127.0.0.1:1\n      identity: http://x\n",
                "identity",
            ),
            (
                "services:\n  r:80:\n    - address: 127.0.0.1:1\n      colour: red\n",
                "colour",
            ),
            ("services: [1, 2\n", "invalid YAML"),
        ];
        for (text, needle) in cases {
            let p = write(dir.path(), "bad.yaml", text);
            let err = read(&p).unwrap_err().to_string();
            assert!(err.contains("bad.yaml"), "{err}");
            assert!(err.contains(needle), "{err:?} should contain {needle:?}");
        }
        let missing = read(&dir.path().join("absent.yaml"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }
}
