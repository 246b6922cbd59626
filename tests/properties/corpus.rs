//! The corpus under `tests/corpus/`: every input there must be rejected, without a panic, and
//! files for the reason `expected.txt` gives.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use mesh::{
    core::{
        ServiceName,
        config::{LoadOptions, Workload, load},
        discover::FileSource,
        duration,
        identity::SpiffeId,
        trace_context::TraceContext,
    },
    tonic::grpc_timeout,
};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(name)
}

/// The inputs of a line file, unescaped.
fn lines(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(corpus(name)).unwrap();
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(unescape)
        .collect();
    assert!(lines.len() >= 10, "{name}: only {} inputs", lines.len());
    lines
}

fn unescape(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('u') => {
                let code: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                out.push(char::from_u32(u32::from_str_radix(&code, 16).unwrap()).unwrap());
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// `file: text` lines of a directory's `expected.txt`.
fn expected(dir: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(corpus(dir).join("expected.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (file, want) = l.split_once(':').unwrap();
            (file.to_owned(), want.trim().to_owned())
        })
        .collect()
}

#[test]
fn hostile_headers_and_names_are_rejected() {
    for s in lines("traceparent.txt") {
        assert!(
            TraceContext::parse(&s, Some(&s)).is_err(),
            "traceparent {s:?} accepted"
        );
    }
    for s in lines("grpc-timeout.txt") {
        assert_eq!(
            grpc_timeout::decode(&s),
            None,
            "grpc-timeout {s:?} accepted"
        );
    }
    for s in lines("spiffe.txt") {
        assert!(SpiffeId::parse(&s).is_err(), "SPIFFE ID {s:?} accepted");
    }
    for s in lines("duration.txt") {
        assert!(duration::parse(&s).is_err(), "duration {s:?} accepted");
    }
    for s in lines("service-name.txt") {
        assert!(
            ServiceName::parse(&s).is_err(),
            "service name {s:?} accepted"
        );
    }
}

#[test]
fn hostile_endpoints_files_are_rejected_for_their_reason() {
    let want = expected("endpoints");
    assert!(want.len() >= 15);
    for (file, text) in &want {
        let path = corpus("endpoints").join(file);
        let err = FileSource::open(&path).expect_err(file).to_string();
        assert!(
            err.contains(&path.display().to_string()),
            "{file}: path not named in {err}"
        );
        assert!(
            err.contains(text.as_str()),
            "{file}: expected {text:?} in {err}"
        );
    }
}

#[test]
fn hostile_istio_documents_are_rejected_for_their_reason() {
    let want = expected("documents");
    assert!(want.len() >= 25);
    for (file, text) in &want {
        let path = corpus("documents").join(file);
        let errors = load(
            std::slice::from_ref(&path),
            &Workload::default(),
            &LoadOptions::default(),
        )
        .expect_err(file);
        let errors: Vec<_> = errors.errors().collect();
        assert!(!errors.is_empty(), "{file}: rejected without an error");
        for e in &errors {
            assert_eq!(e.file, path, "{file}: {e}");
        }
        let all = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains(text.as_str()),
            "{file}: expected {text:?} in\n{all}"
        );
    }
}
