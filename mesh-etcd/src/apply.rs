//! `mesh apply` and `mesh get`: Istio documents written to etcd only when the whole resulting
//! set validates, in one transaction.

use std::{collections::BTreeMap, path::PathBuf};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use mesh_core::config::{
    ConfigError, ConfigErrors, LoadOptions, Workload, files, load_texts, split_documents,
};

use crate::{EtcdError, EtcdOptions, mirror};

/// The prefix documents live under unless told otherwise.
pub const DEFAULT_CONFIG_PREFIX: &str = "/mesh/config/";
/// The prefix endpoint records live under unless told otherwise.
pub const DEFAULT_SERVICES_PREFIX: &str = "/mesh/services/";

/// Attempts of an [`apply`] without an expected revision when another writer keeps changing
/// the prefix between the read and the write.
const ATTEMPTS: usize = 5;

/// How [`apply`] validates and writes.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The prefix (default [`DEFAULT_CONFIG_PREFIX`]).
    pub prefix: String,
    /// The workload the set is validated for, and the namespace of documents naming none.
    pub workload: Workload,
    /// Lenient mode (fields mesh does not implement are warnings).
    pub load: LoadOptions,
    /// Write only if nothing under the prefix changed after this revision.
    pub expect_revision: Option<i64>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_CONFIG_PREFIX.to_owned(),
            workload: Workload::new("default", []),
            load: LoadOptions::default(),
            expect_revision: None,
        }
    }
}

/// What [`apply`] did.
#[derive(Clone, Debug)]
pub struct Applied {
    /// etcd's revision after the write (the read's, when nothing changed).
    pub revision: i64,
    /// Keys written (new or changed documents).
    pub written: Vec<String>,
    /// Keys whose document was already live, unchanged.
    pub unchanged: Vec<String>,
    /// Warnings of the resulting set.
    pub warnings: Vec<ConfigError>,
}

/// The key of a document: `<prefix><kind>/<namespace>/<name>`.
pub fn document_key(prefix: &str, kind: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}{kind}/{namespace}/{name}")
}

/// Validates the documents of `paths` (files or directories) exactly as `mesh check` does,
/// together with the documents already under the prefix (a VirtualService may use a subset
/// of a DestinationRule already live), and writes them — one key per document, as JSON — in
/// one etcd transaction, only if the whole resulting set is valid. The transaction is guarded
/// by the revision read (or `expect_revision`): if anything under the prefix changed
/// meanwhile, nothing is written (and, without `expect_revision`, the read, validation and
/// write are tried again). An invalid document never reaches etcd.
///
/// etcd bounds a transaction's operations (`--max-txn-ops`, 128 by default): apply at most
/// that many changed documents at once.
pub async fn apply(
    etcd: &EtcdOptions,
    paths: &[PathBuf],
    options: &ApplyOptions,
) -> Result<Applied, EtcdError> {
    let invalid = |errors: Vec<ConfigError>| EtcdError::Invalid(Box::new(ConfigErrors(errors)));
    let files = files(paths).map_err(|e| invalid(vec![e]))?;
    let mut texts = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            invalid(vec![ConfigError::error(
                f,
                "",
                "",
                format!("cannot read: {e}"),
            )])
        })?;
        texts.push((f.clone(), text));
    }
    let namespace = options.workload.naming.namespace.clone();
    let mut new: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, text) in &texts {
        match split_documents(file, text, &namespace) {
            Ok(docs) => {
                for d in docs {
                    let key = document_key(&options.prefix, &d.kind, &d.namespace, &d.name);
                    let value = serde_json::to_string(&d.value).unwrap_or_default();
                    if new.insert(key.clone(), value).is_some() {
                        problems.push(ConfigError::error(
                            file,
                            format!("{} {}/{}", d.kind, d.namespace, d.name),
                            "metadata.name",
                            "the same document is given twice",
                        ));
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    let mut client = etcd.connect().await?;
    for _ in 0..ATTEMPTS {
        let (live, read_revision) = mirror::list(&mut client, &options.prefix)
            .await
            .map_err(|e| EtcdError::request(format!("listing {:?}", options.prefix), e))?;
        let live: BTreeMap<String, String> = live
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        // The set as it will be: the live documents not replaced, and the files (named by
        // their paths, so that errors point at what the user wrote).
        let mut merged: Vec<(String, &str)> = live
            .iter()
            .filter(|(k, _)| !new.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.as_str()))
            .collect();
        merged.extend(
            texts
                .iter()
                .map(|(f, t)| (f.display().to_string(), t.as_str())),
        );
        let refs: Vec<(&str, &str)> = merged.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let set = load_texts(&refs, &options.workload, &options.load)
            .map_err(|e| EtcdError::Invalid(Box::new(e)))?;
        let (written, unchanged): (Vec<_>, Vec<_>) = new
            .iter()
            .partition(|(k, v)| live.get(*k).is_none_or(|l| l != *v));
        let written: Vec<(String, String)> = written
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let unchanged: Vec<String> = unchanged.into_iter().map(|(k, _)| k.clone()).collect();
        let guard = options.expect_revision.unwrap_or(read_revision);
        if let Some(expected) = options.expect_revision {
            if expected < read_revision && changed_after(&client, &options.prefix, expected).await?
            {
                return Err(EtcdError::Conflict {
                    prefix: options.prefix.clone(),
                    expected,
                    current: read_revision,
                });
            }
        }
        if written.is_empty() {
            return Ok(Applied {
                revision: read_revision,
                written: Vec::new(),
                unchanged,
                warnings: set.warnings().to_vec(),
            });
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(options.prefix.as_str(), CompareOp::Less, guard + 1)
                    .with_prefix(),
            ])
            .and_then(
                written
                    .iter()
                    .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                    .collect::<Vec<_>>(),
            );
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| EtcdError::request("writing the documents", e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            tracing::info!(prefix = %options.prefix, revision, written = written.len(), "documents applied");
            return Ok(Applied {
                revision,
                written: written.into_iter().map(|(k, _)| k).collect(),
                unchanged,
                warnings: set.warnings().to_vec(),
            });
        }
        if let Some(expected) = options.expect_revision {
            return Err(EtcdError::Conflict {
                prefix: options.prefix.clone(),
                expected,
                current: revision,
            });
        }
        tracing::debug!(prefix = %options.prefix, "documents changed between the read and the write: again");
    }
    Err(EtcdError::Conflict {
        prefix: options.prefix.clone(),
        expected: 0,
        current: 0,
    })
}

/// Whether a key under `prefix` was modified after `revision`.
async fn changed_after(
    client: &etcd_client::Client,
    prefix: &str,
    revision: i64,
) -> Result<bool, EtcdError> {
    let mut client = client.clone();
    let resp = client
        .get(
            prefix,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_min_mod_revision(revision + 1)
                    .with_limit(1),
            ),
        )
        .await
        .map_err(|e| EtcdError::request(format!("reading {prefix:?}"), e))?;
    Ok(!resp.kvs().is_empty())
}

/// A document live in etcd.
#[derive(Clone, Debug)]
pub struct LiveDocument {
    /// Its key.
    pub key: String,
    /// Kind, namespace and name, from the key (`<prefix><kind>/<namespace>/<name>`), when the
    /// key has that shape.
    pub id: Option<(String, String, String)>,
    /// The revision it was last written at.
    pub mod_revision: i64,
    /// Its text.
    pub text: String,
}

/// The documents (or any records) under `prefix` and etcd's revision: what `mesh get` shows.
pub async fn list(etcd: &EtcdOptions, prefix: &str) -> Result<(Vec<LiveDocument>, i64), EtcdError> {
    let mut client = etcd.connect().await?;
    let resp = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(|e| EtcdError::request(format!("listing {prefix:?}"), e))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let docs = resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let id = key.strip_prefix(prefix).and_then(|rest| {
                let mut parts = rest.splitn(3, '/');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(k), Some(ns), Some(n)) if !n.contains('/') => {
                        Some((k.to_owned(), ns.to_owned(), n.to_owned()))
                    }
                    _ => None,
                }
            });
            LiveDocument {
                key,
                id,
                mod_revision: kv.mod_revision(),
                text: String::from_utf8_lossy(kv.value()).into_owned(),
            }
        })
        .collect();
    Ok((docs, revision))
}
