//! Reading documents: files and directories, `---`-separated YAML streams and JSON, into
//! typed specs with the file, document and field path of every problem.

use std::path::{Path, PathBuf};

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::yaml::{fast, node::Node};

use super::{
    ConfigError, Workload,
    convert::{self, Ctx},
    error::Problems,
    set::{ConvertedDoc, Doc},
    wire,
};

/// The API versions mesh reads: Istio's served ones.
const NETWORKING: [&str; 3] = [
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];
const SECURITY: [&str; 2] = ["security.istio.io/v1", "security.istio.io/v1beta1"];

/// Istio kinds that exist but that mesh does not implement.
const UNIMPLEMENTED_KINDS: [&str; 9] = [
    "Sidecar",
    "EnvoyFilter",
    "WorkloadEntry",
    "WorkloadGroup",
    "RequestAuthentication",
    "ProxyConfig",
    "Telemetry",
    "WasmPlugin",
    "TrafficExtension",
];

/// The files of `paths`: a file as given; a directory's `*.yaml`, `*.yml` and `*.json` files
/// (not its subdirectories, nor hidden entries such as a ConfigMap's `..data`), by name.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| ConfigError::error(path, "", "", format!("cannot read: {e}")))?;
        if !meta.is_dir() {
            out.push(path.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| ConfigError::error(path, "", "", format!("cannot list: {e}")))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                !name.starts_with('.')
                    && p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Converts the documents of one file's `text`, appending problems to `problems`.
pub(crate) fn convert_text(
    file: &Path,
    text: &str,
    workload: &Workload,
    lenient: bool,
    problems: &mut Vec<ConfigError>,
    out: &mut Vec<Doc>,
) {
    let fail = |problems: &mut Vec<ConfigError>, reason: String| {
        problems.push(ConfigError::error(file, "", "", reason));
    };
    if text.len() > crate::yaml::MAX_FILE_BYTES {
        return fail(
            problems,
            format!(
                "{} bytes is over the limit of {} bytes",
                text.len(),
                crate::yaml::MAX_FILE_BYTES
            ),
        );
    }
    if crate::yaml::is_blank(text) {
        return fail(
            problems,
            "the file is empty (no content but whitespace and comments): a half-written file is never applied; remove it if it is meant to be empty".into(),
        );
    }
    if streamed(file, text, workload, lenient, out) {
        return;
    }
    let values = match parse(file, text) {
        Ok(v) => v,
        Err(reason) => return fail(problems, reason),
    };
    let mut index = 0usize;
    for v in values {
        for item in items(v) {
            index += 1;
            document(file, index, item, workload, lenient, problems, out);
        }
    }
    if index == 0 {
        fail(problems, "the file holds no document".into());
    }
}

/// The fast path of [`convert_text`]: each document read by [`fast`] is converted as soon as
/// it is read and its tree dropped (the trees of a whole large file are most of what a
/// reload allocates); a large file is read and converted in two halves on two threads.
/// Taken only when the whole file is in the subset and converts without any problem to
/// report: otherwise (`false`, nothing appended) the file is converted again on the exact
/// path, whose errors and warnings number the documents and quote serde-saphyr.
fn streamed(
    file: &Path,
    text: &str,
    workload: &Workload,
    lenient: bool,
    out: &mut Vec<Doc>,
) -> bool {
    let json = file.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if json {
        return false;
    }
    let run = |part: &str| {
        let (mut problems, mut docs, mut index) = (Vec::new(), Vec::new(), 0usize);
        let read = fast::for_each_document(part, |node| {
            for item in items(node) {
                index += 1;
                document(
                    file,
                    index,
                    item,
                    workload,
                    lenient,
                    &mut problems,
                    &mut docs,
                );
            }
        });
        read.filter(|_| problems.is_empty())
            .map(|(n, nodes)| (docs, index, n, nodes))
    };
    let (first, second) = match fast::halves(text).filter(|_| crate::yaml::two_cores()) {
        Some((a, b)) => std::thread::scope(|s| {
            let other = s.spawn(|| run(b));
            let first = run(a);
            match other.join() {
                Ok(second) => (first, Some(second)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }),
        None => (run(text), None),
    };
    let Some((mut docs, mut items, mut n, mut nodes)) = first else {
        return false;
    };
    if let Some(second) = second {
        let Some((more, i, m, k)) = second else {
            return false;
        };
        docs.extend(more);
        (items, n, nodes) = (items + i, n + m, nodes + k);
    }
    if items == 0 || n > crate::yaml::MAX_DOCUMENTS || nodes > crate::yaml::MAX_NODES {
        return false;
    }
    out.extend(docs);
    true
}

/// The documents of one parsed value: a `List`'s items (`kubectl get -o yaml` writes one),
/// nothing for an empty document, else the value itself.
fn items(v: Node<'_>) -> Vec<Node<'_>> {
    match v {
        Node::Map(entries)
            if entries
                .iter()
                .any(|(k, v)| k == "kind" && v.as_str() == Some("List")) =>
        {
            entries
                .into_iter()
                .find(|(k, _)| k == "items")
                .and_then(|(_, v)| match v {
                    Node::Seq(items) => Some(items),
                    _ => None,
                })
                .unwrap_or_default()
        }
        Node::Null => Vec::new(),
        v => vec![v],
    }
}

/// Parses a file's text into one value per document (JSON for `.json` files and texts that
/// look like JSON, else multi-document YAML within [`crate::yaml`]'s budget).
fn parse<'t>(file: &Path, text: &'t str) -> Result<Vec<Node<'t>>, String> {
    let json = file.extension().is_some_and(|e| e == "json");
    // A text that looks like JSON is read as JSON (much faster than YAML); a YAML flow
    // mapping that is not JSON falls back to the YAML parser.
    let json_like = !json && text.trim_start().starts_with('{');
    if json {
        return serde_json::from_str::<Value>(text)
            .map(|v| vec![Node::from(v)])
            .map_err(|e| format!("invalid JSON: {e}"));
    }
    if json_like {
        if let Ok(v) = serde_json::from_str::<Value>(text) {
            return Ok(vec![Node::from(v)]);
        }
    }
    // The common subset first (about ten times faster); anything else, and every error, is
    // serde-saphyr's to read and report.
    if let Some(docs) = fast::documents(text) {
        return Ok(docs);
    }
    serde_saphyr::from_multiple_with_options::<Value>(text, crate::yaml::options())
        .map(|docs| docs.into_iter().map(Node::from).collect())
        .map_err(|e| format!("invalid YAML: {e}"))
}

/// One document of a file, as written, with what names it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDocument {
    /// `kind` (`VirtualService`).
    pub kind: String,
    /// `metadata.namespace`, or the namespace the file is read in.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The whole document.
    pub value: Value,
}

/// Splits a file's text into its documents (`---`-separated YAML, JSON, `kind: List`), each
/// with its kind, namespace (`namespace` when the document names none) and name — what a
/// store keeping one document per record (etcd) needs. Only the shape is checked here;
/// validation is [`load`](super::load)'s.
pub fn split_documents(
    file: &Path,
    text: &str,
    namespace: &str,
) -> Result<Vec<RawDocument>, ConfigError> {
    let fail = |document: &str, field: &str, reason: String| {
        ConfigError::error(file, document, field, reason)
    };
    if crate::yaml::is_blank(text) {
        return Err(fail("", "", "the file is empty".into()));
    }
    let mut out = Vec::new();
    for v in parse(file, text).map_err(|r| fail("", "", r))? {
        for item in items(v) {
            let item = item.into_value();
            let unnamed = format!("document {}", out.len() + 1);
            let str_at = |path: &[&str]| {
                let mut cur = &item;
                for p in path {
                    cur = cur.get(p)?;
                }
                cur.as_str().map(str::to_owned)
            };
            let kind = str_at(&["kind"])
                .ok_or_else(|| fail(&unnamed, "kind", "a document needs a kind".into()))?;
            let name = str_at(&["metadata", "name"])
                .filter(|n| !n.is_empty())
                .ok_or_else(|| fail(&unnamed, "metadata.name", "a document needs a name".into()))?;
            let namespace =
                str_at(&["metadata", "namespace"]).unwrap_or_else(|| namespace.to_owned());
            out.push(RawDocument {
                kind,
                namespace,
                name,
                value: item,
            });
        }
    }
    if out.is_empty() {
        return Err(fail("", "", "the file holds no document".into()));
    }
    Ok(out)
}

fn document(
    file: &Path,
    index: usize,
    v: Node<'_>,
    workload: &Workload,
    lenient: bool,
    problems: &mut Vec<ConfigError>,
    out: &mut Vec<Doc>,
) {
    // What names the document before its kind and name are known (only for an error).
    let unnamed = || format!("document {index}");
    let Node::Map(mut map) = v else {
        problems.push(ConfigError::error(
            file,
            unnamed(),
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        ));
        return;
    };
    let spec = take(&mut map, "spec");
    take(&mut map, "status");
    // Reported in key order, as the keys of a `Value` are.
    let mut keys: Vec<&str> = map.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    for key in keys {
        if !matches!(key, "apiVersion" | "kind" | "metadata") {
            problems.push(ConfigError::error(file, unnamed(), key, format!("unknown field `{key}` (a document has apiVersion, kind, metadata, spec, status)")));
        }
    }
    let header: wire::DocumentHeader = match decode(Node::Map(map), "") {
        Ok(h) => h,
        Err((field, reason)) => {
            problems.push(ConfigError::error(file, unnamed(), field, reason));
            return;
        }
    };
    let ns = header
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| workload.naming.namespace.clone());
    let name = header.metadata.name.clone().unwrap_or_default();
    let document = [header.kind.as_str(), " ", &ns, "/", &name].concat();
    if name.is_empty() {
        problems.push(ConfigError::error(
            file,
            &document,
            "metadata.name",
            "a document needs a name",
        ));
        return;
    }
    let kind = header.kind.as_str();
    let versions: &[&str] = match kind {
        "VirtualService" | "DestinationRule" | "ServiceEntry" | "Gateway" => &NETWORKING,
        "AuthorizationPolicy" | "PeerAuthentication" => &SECURITY,
        k if UNIMPLEMENTED_KINDS.contains(&k) => {
            let mut p = Problems {
                file,
                document: &document,
                lenient,
                out: problems,
            };
            p.unimplemented("kind", &format!("kind {k}"));
            return;
        }
        other => {
            problems.push(ConfigError::error(
                file,
                &document,
                "kind",
                format!("{other:?} is not a kind mesh reads (VirtualService, DestinationRule, ServiceEntry, AuthorizationPolicy, PeerAuthentication; Gateway is skipped)"),
            ));
            return;
        }
    };
    if !versions.contains(&header.api_version.as_str()) {
        problems.push(ConfigError::error(
            file,
            &document,
            "apiVersion",
            format!(
                "{:?} is not an apiVersion of {kind} (one of {})",
                header.api_version,
                versions.join(", ")
            ),
        ));
        return;
    }
    if kind == "Gateway" {
        problems.push(
            ConfigError::error(
                file,
                &document,
                "",
                "a Gateway configures ingress proxies, not in-process clients: skipped",
            )
            .warning(),
        );
        return;
    }
    let spec = spec.unwrap_or(Node::Map(Vec::new()));
    let mut cx = Ctx {
        naming: &workload.naming,
        workload,
        ns: &ns,
        document: &document,
        p: Problems {
            file,
            document: &document,
            lenient,
            out: problems,
        },
    };
    let converted = match kind {
        "VirtualService" => typed(&mut cx, spec, convert::virtual_service::convert)
            .map(|d| ConvertedDoc::VirtualService(d.into())),
        "DestinationRule" => typed(&mut cx, spec, convert::destination_rule::convert)
            .map(|d| ConvertedDoc::DestinationRule(d.into())),
        "ServiceEntry" => typed(&mut cx, spec, convert::service_entry::convert)
            .map(|d| ConvertedDoc::ServiceEntry(d.into())),
        "AuthorizationPolicy" => {
            typed(&mut cx, spec, convert::security::authorization).map(ConvertedDoc::Authorization)
        }
        "PeerAuthentication" => typed(&mut cx, spec, convert::security::peer_authentication)
            .map(ConvertedDoc::PeerAuthentication),
        _ => None,
    };
    if let Some(c) = converted {
        out.push((file.to_path_buf(), document, c));
    }
}

/// Removes the entry `key` of a mapping, returning its value.
fn take<'t>(map: &mut Vec<(Cow<'t, str>, Node<'t>)>, key: &str) -> Option<Node<'t>> {
    let at = map.iter().position(|(k, _)| k == key)?;
    Some(map.remove(at).1)
}

/// Decodes `spec` into its wire type (a typo is an error naming the field), then converts it.
fn typed<S: DeserializeOwned, T>(
    cx: &mut Ctx<'_>,
    spec: Node<'_>,
    f: impl FnOnce(&mut Ctx<'_>, &S) -> Option<T>,
) -> Option<T> {
    match decode::<S>(spec, "spec") {
        Ok(s) => f(cx, &s),
        Err((field, reason)) => {
            cx.p.error(field, reason);
            None
        }
    }
}

/// Deserializes `v`, reporting an error with its field path under `prefix`.
fn decode<T: DeserializeOwned>(v: Node<'_>, prefix: &str) -> Result<T, (String, String)> {
    // Straight from the tree, without tracking the field path (most of the cost of a reload
    // was building, path-tracking and dropping `Value`s); when it does not fit, again through
    // the `Value` with the path, so the error is the one `Value` gives.
    if let Ok(t) = T::deserialize(&v) {
        return Ok(t);
    }
    serde_path_to_error::deserialize(v.into_value()).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            (p, ".") => p.to_owned(),
            ("", rest) => rest.to_owned(),
            (p, rest) => format!("{p}.{rest}"),
        };
        let reason = e.into_inner().to_string();
        (field, reason)
    })
}
