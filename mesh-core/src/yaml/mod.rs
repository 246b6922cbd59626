//! Reading YAML configuration: one set of parser limits for every file mesh reads.
//!
//! serde-saphyr guards against hostile YAML with a budget (nodes, events, aliases, nesting,
//! documents). Its defaults (250,000 nodes, 1,024 documents) suit a small config file from an
//! unknown source, and an endpoints file breaks them at about 36,000 endpoints. The files mesh
//! reads are **trusted local files** (written by the operator, a ConfigMap, a deployment tool),
//! so the budget is sized for the largest real ones instead:
//!
//! | limit | value | what it allows |
//! |---|---|---|
//! | file size | [`MAX_FILE_BYTES`] (256 MiB) | far beyond any real configuration |
//! | nodes | [`MAX_NODES`] (10 million) | ≈ 1.4 million endpoints with two labels each (7 nodes per endpoint) |
//! | documents | [`MAX_DOCUMENTS`] (100,000) | Istio documents in one `---`-separated file |
//! | nesting | [`MAX_DEPTH`] (64) | Istio's deepest documents nest about 12 levels |
//!
//! Aliases keep serde-saphyr's limits (an alias "billion laughs" costs what its expansion
//! costs). When a limit is hit, the file is rejected like any invalid file (the last good
//! configuration stays) and the error names the limit; the fix is to split the file (an
//! endpoints file per group of services, a directory of Istio documents), or, for endpoints, to
//! write JSON, which has no node limit.

use serde::de::DeserializeOwned;

pub(crate) mod fast;
pub(crate) mod node;

/// Largest file read.
pub const MAX_FILE_BYTES: usize = 256 * 1024 * 1024;
/// Most YAML nodes (scalars, sequences, mappings) in one file.
pub const MAX_NODES: usize = 10_000_000;
/// Most YAML documents in one file.
pub const MAX_DOCUMENTS: usize = 100_000;
/// Deepest nesting of sequences and mappings.
pub const MAX_DEPTH: usize = 64;

/// The parser options for a trusted local file.
pub(crate) fn options() -> serde_saphyr::Options {
    // Both types are non-exhaustive: start from the defaults and set what differs.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES);
    budget.max_nodes = MAX_NODES;
    // Every node is at least one event, plus the ends of collections and documents.
    budget.max_events = 3 * MAX_NODES;
    budget.max_documents = MAX_DOCUMENTS;
    budget.max_depth = MAX_DEPTH;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Whether this machine runs two threads at once (large reloads are read on two).
pub(crate) fn two_cores() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Parses one YAML document of a trusted file.
pub(crate) fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, options())
}

/// Whether a YAML text holds no content at all: empty, only whitespace, comments and document
/// markers (`---`, `...`). Such a file is a write in progress or a mistake, never a
/// configuration.
pub(crate) fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// Every YAML file of the repository (Istio's Bookinfo documents, the invalid-document corpus,
/// test fixtures), with its text: what the readers' differential tests run on.
#[cfg(test)]
pub(crate) fn repository_yaml_files() -> Vec<(std::path::PathBuf, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stack = vec![root.join("examples"), root.join("tests")];
    let mut out = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                let text = std::fs::read_to_string(&p).expect("a readable repository file");
                out.push((p, text));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_texts_are_recognized() {
        for blank in [
            "",
            "  \n\t\n",
            "# only a comment\n  # another\n",
            "---\n# c\n...\n",
        ] {
            assert!(is_blank(blank), "{blank:?}");
        }
        for content in ["services: {}", "a: 1 # comment", "--- {}"] {
            assert!(!is_blank(content), "{content:?}");
        }
    }

    #[test]
    fn the_budget_takes_a_large_file() {
        // 300,000 nodes: over serde-saphyr's default budget of 250,000.
        let mut text = String::from("items:\n");
        for i in 0..100_000 {
            text.push_str(&format!("  - {{a: {i}}}\n"));
        }
        let v: std::collections::BTreeMap<String, Vec<std::collections::BTreeMap<String, u32>>> =
            from_str(&text).unwrap();
        assert_eq!(v["items"].len(), 100_000);
    }
}
