//! The state of a configuration or discovery source, as the debug snapshot and the metrics
//! report it (re-exported by `telemetry`): its version, rejections, and for a remote source its
//! connection.

use serde::Serialize;

/// One configuration source of a mesh.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigSourceSnapshot {
    /// What kind of source (`endpoints-file`).
    pub kind: &'static str,
    /// Where it is read from.
    pub path: String,
    /// The live version: how many times it was loaded successfully (1 = the initial load).
    pub version: u64,
    /// The content hash of the configuration in force (Istio documents).
    pub digest: Option<String>,
    /// Rejected loads (invalid content; the previous version stayed live).
    pub rejections: u64,
    /// The latest rejection if the source is still on an older version, with field and reason.
    pub last_error: Option<String>,
    /// The latest rejections (up to eight), oldest first, even after a good reload.
    pub recent_errors: Vec<ConfigError>,
    /// For a source read over the network (etcd): its connection and position.
    pub remote: Option<RemoteState>,
}

/// The connection of a configuration or discovery source read over the network (etcd). While
/// it is down the source keeps its last good state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemoteState {
    /// Whether the watch is established now.
    pub connected: bool,
    /// The store's revision of the state in force (etcd's revision: the live version).
    pub revision: i64,
    /// Times the watch was lost and re-established (or is being re-established).
    pub reconnects: u64,
    /// Full re-reads (the first list, and after a compaction passed the watch's revision).
    pub relists: u64,
    /// Seconds since the connection was lost, while it is.
    pub disconnected_secs: Option<u64>,
    /// The latest connection error.
    pub last_error: Option<String>,
    /// Records skipped because they are not valid (garbage, half-written), each named in a
    /// `warn` event.
    pub skipped_records: u64,
}

/// One rejected configuration load.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigError {
    /// When, in seconds since the Unix epoch.
    pub at_unix_secs: u64,
    /// The error: path, field and reason.
    pub error: String,
}
