//! What can go wrong talking to etcd.

use mesh_core::config::ConfigErrors;

/// An etcd operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The options are not valid (a bad URL, an unreadable TLS file).
    #[error("etcd options: {0}")]
    Options(String),
    /// No connection to etcd could be made.
    #[error("cannot connect to {endpoints}: {reason}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        reason: String,
    },
    /// A request failed.
    #[error("etcd: {what}: {source}")]
    Request {
        /// What was being done.
        what: String,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The documents are not valid: nothing was written (apply) or loaded (open).
    #[error("{0}")]
    Invalid(Box<ConfigErrors>),
    /// `--expect-revision`: somebody changed the documents after that revision; nothing was
    /// written.
    #[error(
        "conflict: documents under {prefix:?} changed after revision {expected} (now {current}); nothing was written"
    )]
    Conflict {
        /// The prefix.
        prefix: String,
        /// The revision the caller expected.
        expected: i64,
        /// etcd's revision now.
        current: i64,
    },
}

impl EtcdError {
    pub(crate) fn request(what: impl Into<String>, source: etcd_client::Error) -> Self {
        Self::Request {
            what: what.into(),
            source,
        }
    }
}
