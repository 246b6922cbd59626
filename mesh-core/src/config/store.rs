//! The live configuration: one validated [`ConfigSet`] behind an atomic swap, reloaded when
//! its files change.

use std::{
    collections::VecDeque,
    fmt,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::{ConfigErrors, ConfigSet, LoadOptions, Workload};

/// Rejections remembered for the debug snapshot.
const RECENT: usize = 8;

/// The live configuration. Cheap to clone; clones share it.
///
/// Every change is validated whole and swapped in atomically: a request reads the set once
/// ([`load`](Self::load)) and finishes on it even if a reload swaps another in meanwhile. A
/// change that does not validate is rejected — a `warn` event, [`ConfigStoreStats::rejections`],
/// the errors in [`ConfigStoreStats::last_error`] — and the set in force stays. A file written
/// in several steps is only read once its content has stayed the same for the watcher's settle
/// time, so a half-written file is never applied.
#[derive(Clone)]
pub struct ConfigStore {
    inner: Arc<Inner>,
}

struct Inner {
    paths: Vec<PathBuf>,
    /// Where a store fed from elsewhere reads from (`etcd://…`), for the debug snapshot.
    origin: Option<String>,
    /// The connection of a remote source feeding the store.
    remote: Mutex<Option<crate::telemetry::RemoteState>>,
    workload: Workload,
    options: LoadOptions,
    current: ArcSwap<ConfigSet>,
    generation: AtomicU64,
    changed: watch::Sender<u64>,
    stats: Mutex<Stats>,
    /// Kept alive with the store; dropping it stops the watch thread.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// Called with every set swapped in (the mesh updates ServiceEntry endpoints).
    listeners: Mutex<Vec<Listener>>,
    /// The files' conversions: a reload converts again only the files that changed.
    cache: Mutex<super::FileCache>,
    /// Things that live as long as the store (a remote source's watch task).
    kept: Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>,
}

/// A [`ConfigStore`] that does not keep it alive: what a source feeding the store holds, so
/// that it stops when the store's last user drops it.
#[derive(Clone)]
pub struct WeakConfigStore(std::sync::Weak<Inner>);

impl WeakConfigStore {
    /// The store, if anyone still holds it.
    pub fn upgrade(&self) -> Option<ConfigStore> {
        self.0.upgrade().map(|inner| ConfigStore { inner })
    }
}

impl fmt::Debug for WeakConfigStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakConfigStore")
    }
}

/// A function told of every new set; `false` removes it.
type Listener = Box<dyn Fn(&ConfigSet) -> bool + Send + Sync>;

#[derive(Default)]
struct Stats {
    reloads: u64,
    rejections: u64,
    last_error: Option<ConfigErrors>,
    recent: VecDeque<(SystemTime, String)>,
}

/// Counters and state of a [`ConfigStore`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConfigStoreStats {
    /// The live set's version (content hash).
    pub version: String,
    /// Swaps since the store opened (1 for the first set).
    pub generation: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Rejected changes (the set in force stayed).
    pub rejections: u64,
    /// The errors of the latest change, if it was rejected (cleared by the next good one).
    pub last_error: Option<String>,
    /// Recent rejections (time since the Unix epoch in seconds, errors), oldest first.
    pub recent_errors: Vec<(u64, String)>,
    /// Warnings of the live set.
    pub warnings: Vec<String>,
}

impl ConfigStore {
    /// Loads the documents of `paths` (which must validate: there is no set to fall back on
    /// yet) and watches them for changes.
    pub fn open(
        paths: Vec<PathBuf>,
        workload: Workload,
        options: LoadOptions,
    ) -> Result<Self, ConfigErrors> {
        let mut cache = super::FileCache::default();
        let set = super::load_cached(&paths, &workload, &options, &mut cache)?;
        let store = Self::new(set, paths, None, workload, options);
        *store.inner.cache.lock().unwrap_or_else(|e| e.into_inner()) = cache;
        store.watch();
        tracing::info!(
            version = store.version(),
            documents = store.load().documents(),
            "configuration loaded"
        );
        Ok(store)
    }

    /// A store holding `set` and nothing to reload it from (configuration from code or from
    /// another source, which calls [`replace`](Self::replace)).
    pub fn fixed(set: ConfigSet) -> Self {
        let workload = set.workload().clone();
        Self::new(set, Vec::new(), None, workload, LoadOptions::default())
    }

    /// A store fed by a source outside the file system (`origin`, e.g.
    /// `etcd://127.0.0.1:2379/mesh/config/`), which validates every change whole and calls
    /// [`replace`](Self::replace) or [`reject`](Self::reject), and reports its connection with
    /// [`set_remote_state`](Self::set_remote_state).
    pub fn remote(set: ConfigSet, origin: impl Into<String>) -> Self {
        let workload = set.workload().clone();
        Self::new(
            set,
            Vec::new(),
            Some(origin.into()),
            workload,
            LoadOptions::default(),
        )
    }

    fn new(
        set: ConfigSet,
        paths: Vec<PathBuf>,
        origin: Option<String>,
        workload: Workload,
        options: LoadOptions,
    ) -> Self {
        let (changed, _) = watch::channel(1);
        Self {
            inner: Arc::new(Inner {
                paths,
                origin,
                remote: Mutex::new(None),
                workload,
                options,
                current: ArcSwap::from_pointee(set),
                generation: AtomicU64::new(1),
                changed,
                stats: Mutex::new(Stats::default()),
                watcher: Mutex::new(None),
                listeners: Mutex::new(Vec::new()),
                cache: Mutex::new(super::FileCache::default()),
                kept: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The live set, for one request (cheap; hold it no longer than the request).
    pub fn load(&self) -> Guard<Arc<ConfigSet>> {
        self.inner.current.load()
    }

    /// The live set, to keep.
    pub fn current(&self) -> Arc<ConfigSet> {
        self.inner.current.load_full()
    }

    /// Incremented by every swap: a cheap way for caches to notice a new set.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The live version (content hash).
    pub fn version(&self) -> String {
        self.inner.current.load().version().to_owned()
    }

    /// The workload the documents are read for.
    pub fn workload(&self) -> &Workload {
        &self.inner.workload
    }

    /// The files and directories read.
    pub fn paths(&self) -> &[PathBuf] {
        &self.inner.paths
    }

    /// Where the documents come from: the paths, or a remote store's origin.
    pub fn origin(&self) -> String {
        match &self.inner.origin {
            Some(o) => o.clone(),
            None => self
                .inner
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// A handle that does not keep the store alive.
    pub fn downgrade(&self) -> WeakConfigStore {
        WeakConfigStore(Arc::downgrade(&self.inner))
    }

    /// Keeps `value` alive as long as the store (a remote source's task guard, which stops the
    /// task when dropped).
    pub fn keep(&self, value: impl std::any::Any + Send + Sync) {
        self.inner
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(value));
    }

    /// Records the connection state of the remote source feeding this store.
    pub fn set_remote_state(&self, state: crate::telemetry::RemoteState) {
        *self.inner.remote.lock().unwrap_or_else(|e| e.into_inner()) = Some(state);
    }

    /// The connection state of the remote source feeding this store, if any.
    pub fn remote_state(&self) -> Option<crate::telemetry::RemoteState> {
        self.inner
            .remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notified with the new generation after every swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Calls `f` with every set swapped in from now on, until it returns `false`.
    pub fn on_swap(&self, f: impl Fn(&ConfigSet) -> bool + Send + Sync + 'static) {
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Swaps in a validated set.
    pub fn replace(&self, set: ConfigSet) {
        let version = set.version().to_owned();
        let warnings = set.warnings().len();
        let set = Arc::new(set);
        self.inner
            .listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|f| f(&set));
        self.inner.current.store(set);
        let generation = self.inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
        {
            let mut s = self.lock();
            s.reloads += 1;
            s.last_error = None;
        }
        tracing::info!(%version, generation, warnings, "configuration swapped in");
        self.inner.changed.send_replace(generation);
    }

    /// Records a rejected change (the set in force stays).
    pub fn reject(&self, errors: ConfigErrors) {
        tracing::warn!(errors = %errors, "configuration change rejected; keeping the configuration in force");
        let mut s = self.lock();
        s.rejections += 1;
        if s.recent.len() == RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back((SystemTime::now(), errors.to_string()));
        s.last_error = Some(errors);
    }

    /// Reads the files again: swaps the set in if it validates, else records the rejection.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let inner = &self.inner;
        let loaded = {
            let mut cache = inner.cache.lock().unwrap_or_else(|e| e.into_inner());
            super::load_cached(&inner.paths, &inner.workload, &inner.options, &mut cache)
        };
        match loaded {
            Ok(set) if set.version() == inner.current.load().version() => Ok(()),
            Ok(set) => {
                self.replace(set);
                Ok(())
            }
            Err(e) => {
                self.reject(e.clone());
                Err(e)
            }
        }
    }

    /// Counters and state.
    pub fn stats(&self) -> ConfigStoreStats {
        let cur = self.inner.current.load();
        let s = self.lock();
        ConfigStoreStats {
            version: cur.version().to_owned(),
            generation: self.generation(),
            reloads: s.reloads,
            rejections: s.rejections,
            last_error: s.last_error.as_ref().map(ToString::to_string),
            recent_errors: s
                .recent
                .iter()
                .map(|(t, e)| {
                    (
                        t.duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs()),
                        e.clone(),
                    )
                })
                .collect(),
            warnings: cur.warnings().iter().map(ToString::to_string).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch(&self) {
        if self.inner.paths.is_empty() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let paths: Vec<&std::path::Path> = self.inner.paths.iter().map(PathBuf::as_path).collect();
        let watcher = crate::fs_watch::watch_files(&paths, "mesh-config-watch", move || {
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            let store = ConfigStore { inner };
            settle(&store);
            let _ = store.reload();
            true
        });
        match watcher {
            Ok(w) => *self.inner.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the configuration files: changes need ConfigStore::reload")
            }
        }
    }
}

/// Waits (on the watcher's thread) until the files read the same twice in a row, a settle
/// time apart, for at most a second: a writer that writes a file in several steps is done.
fn settle(store: &ConfigStore) {
    let snapshot = || {
        super::load::files(store.paths())
            .map(|files| {
                files
                    .iter()
                    .map(|f| std::fs::read(f).unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let mut last = snapshot();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        let now = snapshot();
        if now == last {
            return;
        }
        last = now;
    }
}

impl fmt::Debug for ConfigStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigStore")
            .field("origin", &self.origin())
            .field("version", &self.version())
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}
