//! Property tests (proptest) on every parser that takes outside input: `traceparent` /
//! `tracestate`, `grpc-timeout`, SPIFFE IDs, durations, endpoints files, Istio documents and
//! etcd endpoint records. Arbitrary input never panics; generated valid input is accepted and
//! reads back what was written; mutated valid documents are accepted or rejected with the file,
//! the document and a field path.
//!
//! Each test sets its case count; `PROPTEST_CASES` overrides all of them (e.g. `10000` for a
//! long run). `tests/corpus/` keeps the nastiest real inputs found, run by [`corpus`].

mod corpus;
mod documents;
mod endpoints;
mod headers;
mod names;

use proptest::{prelude::*, test_runner::Config};

/// `cases` generated cases, or `PROPTEST_CASES` when set; failures are not persisted to files
/// (a failing case is printed, minimized, with its seed).
pub fn cases(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// A change to a file's text: cut it, drop or repeat a piece, or put garbage in.
#[derive(Clone, Debug)]
pub enum Mutation {
    Truncate(prop::sample::Index),
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, String),
    Repeat(prop::sample::Index, usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1usize..20).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                "[ -~\n\t]{1,10}",
                Just("\u{0}".to_string()),
                Just("&a [*a, *a]".to_string()),
                Just("\n  - address: 127.0.0.1:0\n".to_string()),
                Just("!!binary".to_string()),
                Just("\u{feff}".to_string()),
            ]
        )
            .prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<prop::sample::Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Repeat(i, n)),
    ]
}

pub fn mutate(text: &str, m: &Mutation) -> String {
    let b = text.as_bytes();
    let at = |i: &prop::sample::Index| i.index(b.len() + 1);
    let out: Vec<u8> = match m {
        Mutation::Truncate(i) => b[..at(i)].to_vec(),
        Mutation::Delete(i, n) => {
            let s = at(i);
            [&b[..s], &b[(s + n).min(b.len())..]].concat()
        }
        Mutation::Insert(i, s) => {
            let p = at(i);
            [&b[..p], s.as_bytes(), &b[p..]].concat()
        }
        Mutation::Repeat(i, n) => {
            let s = at(i);
            let e = (s + n).min(b.len());
            [&b[..e], &b[s..e], &b[e..]].concat()
        }
    };
    String::from_utf8_lossy(&out).into_owned()
}
