//! The code's shape, checked: no module cycles between sibling modules, no source file over
//! 600 lines.
//!
//! A module cycle (`retry/attempts.rs` uses `retry/future.rs`, which uses `attempts.rs`) means
//! neither can be read or changed alone. The check reads every `.rs` file of the workspace's
//! crates, collects the module paths each names (`crate::a::b`, `super::c`, `self::d`, also
//! inside `use` groups), and, for two modules under one parent, adds an edge from the sibling
//! that holds the file to the sibling it names. A parent and its children may use each other
//! (a `mod.rs` declares its children and they use its items); items named through a
//! re-export are attributed to the module that re-exports them; unit tests (`#[cfg(test)]`
//! modules, `tests.rs` files) may use anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

const CRATES: [&str; 6] = [
    "src",
    "mesh-core/src",
    "mesh-hyper/src",
    "mesh-tonic/src",
    "mesh-cli/src",
    "mesh-etcd/src",
];
const MAX_LINES: usize = 600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under a crate's `src` (`a/b.rs` and `a/b/mod.rs` are `a::b`;
/// `lib.rs` and `main.rs` the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// Expands `a::{b, c::{d, e}}` (the text after a path root) into its paths.
fn expand(text: &str) -> Vec<Vec<String>> {
    fn parse(chars: &[char], at: &mut usize) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        let mut prefix: Vec<String> = Vec::new();
        let mut word = String::new();
        while *at < chars.len() {
            let c = chars[*at];
            if c.is_alphanumeric() || c == '_' {
                word.push(c);
                *at += 1;
            } else if c == ':' {
                if !word.is_empty() {
                    prefix.push(std::mem::take(&mut word));
                }
                *at += 1;
            } else if c == '{' {
                *at += 1;
                for tail in parse(chars, at) {
                    let mut p = prefix.clone();
                    p.extend(tail);
                    out.push(p);
                }
                prefix.clear();
            } else if c == ',' && (!prefix.is_empty() || !word.is_empty()) {
                if !word.is_empty() {
                    prefix.push(std::mem::take(&mut word));
                }
                out.push(std::mem::take(&mut prefix));
                *at += 1;
            } else if c == '}' {
                *at += 1;
                if !word.is_empty() {
                    prefix.push(std::mem::take(&mut word));
                }
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return out;
            } else if c.is_whitespace() || c == ',' {
                if !word.is_empty() && !prefix.is_empty() && c.is_whitespace() {
                    // `a::b as c`: the path ends at the space.
                    prefix.push(std::mem::take(&mut word));
                    out.push(std::mem::take(&mut prefix));
                } else if !word.is_empty() && prefix.is_empty() && c.is_whitespace() {
                    out.push(vec![std::mem::take(&mut word)]);
                }
                *at += 1;
            } else {
                break;
            }
        }
        if !word.is_empty() {
            prefix.push(word);
        }
        if !prefix.is_empty() {
            out.push(prefix);
        }
        out
    }
    let chars: Vec<char> = text.chars().collect();
    parse(&chars, &mut 0)
}

/// The module paths a file's code names (comments left out).
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    // Unit tests may use anything: the code before a file's `#[cfg(test)]` module counts.
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    for (root, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            // In `a/b.rs` (`a::b`), `super` is `a`; in `a/mod.rs` (`a`), it is the root.
            let mut m = module.to_vec();
            m.pop();
            m
        }),
        ("self::", module.to_vec()),
    ] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(root) {
            let before = rest[..i].chars().next_back();
            let after = &rest[i + root.len()..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // `super::super::x`
            let mut base = base.clone();
            let mut after = after;
            while let Some(a) = after.strip_prefix("super::").filter(|_| root == "super::") {
                base.pop();
                after = a;
            }
            let end = after
                .find(|c: char| {
                    c == ';' || c == '(' || c == '<' || c == ')' || c == '!' || c == '='
                })
                .unwrap_or(after.len());
            for tail in expand(&after[..end]) {
                let mut p = base.clone();
                p.extend(tail.into_iter().filter(|s| s != "self"));
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for krate in CRATES.iter().chain(&["tests", "examples"]) {
        let mut files = Vec::new();
        rust_files(&root().join(krate), &mut files);
        for f in files {
            let n = fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_LINES {
                long.push(format!("{} ({n} lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "split these files: {long:#?}");
}

#[test]
fn no_module_cycles() {
    let mut cycles = Vec::new();
    for krate in CRATES {
        let src = root().join(krate);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        // Unit-test modules (`tests.rs`, `tests/…`) are not part of the library's structure.
        files.retain(|f| {
            !f.strip_prefix(&src)
                .unwrap()
                .iter()
                .any(|c| c == "tests" || c == "tests.rs")
        });
        if files.is_empty() {
            continue;
        }
        let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
        // Edges between siblings, keyed by their parent.
        let mut edges: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for f in &files {
            let m = module_of(&src, f);
            let text = fs::read_to_string(f).unwrap();
            for mut r in references(&m, &text) {
                // The longest prefix that is a module.
                while !r.is_empty() && !modules.contains(&r) {
                    r.pop();
                }
                let common = m.iter().zip(&r).take_while(|(a, b)| a == b).count();
                if common == m.len() || common == r.len() {
                    continue; // the same module, a parent or a child
                }
                edges
                    .entry(m[..common].to_vec())
                    .or_default()
                    .entry(m[common].clone())
                    .or_default()
                    .insert(r[common].clone());
            }
        }
        for (parent, graph) in &edges {
            for a in graph.keys() {
                for b in &graph[a] {
                    if a < b && graph.get(b).is_some_and(|bs| bs.contains(a)) {
                        cycles.push(format!("{krate}: {}: {a} <-> {b}", parent.join("::")));
                    }
                    // Longer cycles: b reaches a.
                    if a < b && !graph.get(b).is_some_and(|bs| bs.contains(a)) {
                        let mut seen = BTreeSet::new();
                        let mut stack = vec![b.clone()];
                        while let Some(n) = stack.pop() {
                            if !seen.insert(n.clone()) {
                                continue;
                            }
                            if let Some(next) = graph.get(&n) {
                                if next.contains(a) && &n != b {
                                    cycles.push(format!(
                                        "{krate}: {}: {a} -> {b} -> … -> {n} -> {a}",
                                        parent.join("::")
                                    ));
                                    break;
                                }
                                stack.extend(next.iter().cloned());
                            }
                        }
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(cycles.is_empty(), "module cycles: {cycles:#?}");
}

#[test]
fn the_reference_reader_reads_use_groups() {
    let m = vec!["client".to_owned(), "endpoint".to_owned()];
    let text = "use super::{\n    RequestBody,\n    dialect::{Dialect, EndpointTarget},\n};\nuse crate::Error;\nfn f() { self::g(); super::super::x::Y::new(); }\n";
    let refs = references(&m, text);
    let has = |p: &[&str]| {
        refs.iter()
            .any(|r| r == &p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    assert!(has(&["client", "RequestBody"]), "{refs:?}");
    assert!(has(&["client", "dialect", "Dialect"]), "{refs:?}");
    assert!(has(&["client", "dialect", "EndpointTarget"]), "{refs:?}");
    assert!(has(&["Error"]), "{refs:?}");
    assert!(has(&["client", "endpoint", "g"]), "{refs:?}");
    assert!(has(&["x", "Y", "new"]), "{refs:?}");
}
