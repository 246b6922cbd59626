//! Istio documents from a key prefix of etcd, watched, validated whole and swapped in.

use std::collections::BTreeMap;

use mesh_core::{
    config::{ConfigStore, LoadOptions, TextLoader, WeakConfigStore, Workload},
    telemetry::RemoteState,
};

use crate::{
    EtcdError, EtcdOptions,
    mirror::{self, Sink, Update},
};

/// Opens a [`ConfigStore`] fed by the Istio documents under `prefix` (one document per key,
/// YAML or JSON, as [`apply`](crate::apply) writes them: `<prefix><kind>/<namespace>/<name>`).
///
/// The same rules as for files: every change (one etcd transaction is one change) is validated
/// with the whole set, then swapped in atomically; an invalid document — written raw into
/// etcd, bypassing `mesh apply` — is rejected with its key, document and field path, and the
/// set in force stays. The live version is etcd's revision (in the store's
/// [`remote_state`](ConfigStore::remote_state), the debug snapshot and the logs). While etcd
/// is unreachable the set in force stays; the watch resumes from the last revision.
///
/// The first list must succeed and validate. The watch stops when the store's last clone is
/// dropped.
///
/// ```no_run
/// use mesh_core::{Mesh, config::{LoadOptions, Workload}};
/// use mesh_etcd::{EtcdOptions, open_config};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = EtcdOptions::from_url("etcd://127.0.0.1:2379")?;
/// let workload = Workload::new("default", [("app", "productpage")]);
/// let store = open_config(&etcd, "/mesh/config/", workload, LoadOptions::default()).await?;
/// let mesh = Mesh::builder().config_store(store).build()?;
/// # Ok(()) }
/// ```
pub async fn open_config(
    options: &EtcdOptions,
    prefix: &str,
    workload: Workload,
    load: LoadOptions,
) -> Result<ConfigStore, EtcdError> {
    let mut client = options.connect().await?;
    let (kvs, revision) = mirror::list(&mut client, prefix)
        .await
        .map_err(|e| EtcdError::request(format!("listing {prefix:?}"), e))?;
    let mut loader = TextLoader::new(workload, load);
    let docs: BTreeMap<String, String> = kvs
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let set = loader
        .load(&texts(&docs))
        .map_err(|errors| EtcdError::Invalid(Box::new(errors)))?;
    let origin = format!("{}{prefix}", options.display());
    tracing::info!(%origin, revision, documents = set.documents(), version = set.version(), "configuration loaded from etcd");
    let store = ConfigStore::remote(set, origin.clone());
    store.set_remote_state(RemoteState {
        connected: true,
        revision,
        relists: 1,
        ..RemoteState::default()
    });
    let sink = ConfigSink {
        store: store.downgrade(),
        loader,
        docs,
        origin,
        remote: RemoteState::default(),
    };
    let task = mirror::spawn(client, options.clone(), prefix.to_owned(), revision, sink);
    store.keep(task);
    Ok(store)
}

fn texts(docs: &BTreeMap<String, String>) -> Vec<(&str, &str)> {
    docs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

struct ConfigSink {
    store: WeakConfigStore,
    loader: TextLoader,
    docs: BTreeMap<String, String>,
    origin: String,
    remote: RemoteState,
}

impl Sink for ConfigSink {
    fn update(&mut self, update: Update, revision: i64) {
        let Some(store) = self.store.upgrade() else {
            return;
        };
        match update {
            Update::Reset(kvs) => {
                self.docs = kvs
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
            }
            Update::Changes(changes) => {
                for (key, value) in changes {
                    match value {
                        Some(v) => self
                            .docs
                            .insert(key, String::from_utf8_lossy(&v).into_owned()),
                        None => self.docs.remove(&key),
                    };
                }
            }
        }
        let started = std::time::Instant::now();
        match self.loader.load(&texts(&self.docs)) {
            Ok(set) => {
                let same = set.version() == store.version();
                if !same {
                    tracing::info!(origin = %self.origin, revision, documents = set.documents(),
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "etcd configuration change validated");
                    store.replace(set);
                }
            }
            Err(errors) => {
                tracing::warn!(origin = %self.origin, revision, "etcd configuration change rejected");
                store.reject(errors);
            }
        }
        self.remote.revision = revision;
        store.set_remote_state(self.remote.clone());
    }

    fn connection(&mut self, state: &RemoteState) {
        self.remote = state.clone();
        if let Some(store) = self.store.upgrade() {
            store.set_remote_state(state.clone());
        }
    }
}
