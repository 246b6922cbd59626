//! The fast reader against serde-saphyr: whatever it reads, it reads as serde-saphyr does.

use proptest::prelude::*;
use serde_json::{Value, json};

/// The fast reader's documents as `Value`s.
fn documents(text: &str) -> Option<Vec<Value>> {
    super::documents(text).map(|d| {
        d.into_iter()
            .map(crate::yaml::node::Node::into_value)
            .collect()
    })
}

/// serde-saphyr's reading of `text` (the reference), `None` when it rejects it.
fn reference(text: &str) -> Option<Vec<Value>> {
    serde_saphyr::from_multiple_with_options::<Value>(text, crate::yaml::options()).ok()
}

/// The property: the fast reader reads a text as serde-saphyr does, or leaves it to it.
fn agrees(text: &str) -> Result<(), String> {
    match (documents(text), reference(text)) {
        (None, _) => Ok(()),
        (Some(fast), Some(slow)) if fast == slow => Ok(()),
        (Some(fast), slow) => Err(format!(
            "text {text:?}\nfast {fast:?}\nserde-saphyr {slow:?}"
        )),
    }
}

fn read(text: &str) -> Vec<Value> {
    agrees(text).unwrap();
    documents(text).unwrap_or_else(|| panic!("left to serde-saphyr: {text:?}"))
}

#[test]
fn reads_what_istio_documents_are_written_in() {
    let text = "# a comment\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews   # trailing comment\n  labels: {app.kubernetes.io/name: reviews}\nspec:\n  hosts:\n  - reviews\n  http:\n  - match:\n    - headers:\n        end-user:\n          exact: \"jason\"\n    route:\n    - destination: {host: reviews, subset: v2}\n      weight: 90\n    timeout: 1.5s\n    retries: {attempts: 3, perTryTimeout: 100ms, retryOn: 'gateway-error,connect-failure'}\n  - route: [{destination: {host: reviews}}]\n---\n---\nkind: B\nlist:\n- a\n- -1\n- ~\n- on\n- \"tab\\there \\u00e9\"\n- 'it''s'\n- /productpage\n";
    let docs = read(text);
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0]["spec"]["http"][0]["retries"],
        json!({"attempts": 3, "perTryTimeout": "100ms", "retryOn": "gateway-error,connect-failure"})
    );
    assert_eq!(
        docs[1]["list"],
        json!(["a", -1, null, true, "tab\there é", "it's", "/productpage"])
    );
}

#[test]
fn leaves_everything_else_to_serde_saphyr() {
    for text in [
        "a: &x 1\nb: *x\n",
        "a: !!str 1\n",
        "a: |\n  text\n",
        "a: >-\n  text\n",
        "a: plain\n  continued\n",
        "a: \"two\n  lines\"\n",
        "a: [1,\n  2]\n",
        "? complex\n: key\n",
        "%YAML 1.2\n---\na: 1\n",
        "a: 1\na: 2\n",
        "a:\t1\n",
        "a: 1\r\n",
        "1: x\n",
        "a: b: c\n",
        "- - x\n",
        "a: 1\n...\n",
        "--- {a: 1}\n",
        "a: {b: , c: d}\n",
        "a: [b, ]\n",
        "~\n",
    ] {
        assert!(documents(text).is_none(), "{text:?}");
        agrees(text).unwrap();
    }
}

#[test]
fn empty_documents_are_left_out_as_serde_saphyr_leaves_them() {
    for text in ["", "# only\n", "---\n", "---\n# c\n---\n", "a: 1\n---\n"] {
        agrees(text).unwrap();
        assert_eq!(documents(text), reference(text), "{text:?}");
    }
}

#[test]
fn numbers_in_other_spellings_are_resolved_by_serde_saphyr() {
    for scalar in [
        "0x1F",
        "1_000",
        "1e3",
        ".5",
        "+1",
        "-0",
        "2001-12-14",
        "12:30",
    ] {
        let text = format!("a: {scalar}\n");
        assert_eq!(documents(&text), reference(&text), "{text:?}");
    }
}

/// Every YAML file of the repository (Istio's Bookinfo documents, the invalid-document
/// corpus); Istio's samples must take the fast path.
#[test]
fn the_repository_yaml_files_agree() {
    let mut fast = 0;
    for (p, text) in crate::yaml::repository_yaml_files() {
        agrees(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let bookinfo = p.components().any(|c| c.as_os_str() == "bookinfo");
        if bookinfo && !p.ends_with("bookinfo-gateway.yaml") {
            assert!(documents(&text).is_some(), "{} not read", p.display());
        }
        fast += usize::from(documents(&text).is_some());
    }
    assert!(fast >= 10, "{fast} files read");
}

/// A tree to write as YAML: scalars are written as they are (so many are not what they look
/// like), containers in a style chosen by their byte.
#[derive(Clone, Debug)]
enum Node {
    Scalar(&'static str),
    Map(u8, Vec<(&'static str, Node)>),
    Seq(u8, Vec<Node>),
}

const SCALARS: &[&str] = &[
    "v1",
    "5s",
    "100ms",
    "1.5s",
    "90",
    "-3",
    "0",
    "007",
    "1.5",
    "0x1F",
    "1e3",
    "y",
    "No",
    "ON",
    "~",
    "null",
    "NULL",
    "true",
    "inf",
    ".nan",
    "'quoted'",
    "'it''s'",
    "\"dq\"",
    "\"\\u00e9\\t\"",
    "\"\\q\"",
    "a b",
    "http://x/y",
    "a#b",
    "a #b",
    "a: b",
    ":x",
    "-x",
    "?x",
    "-",
    "é",
    "x,y",
    "[a, b]",
    "{a: 1}",
    "[]",
    "{}",
    "&a x",
    "*a",
    "!t x",
    "|",
    "2001-12-14",
    "/p",
    "--- x",
    "a'b",
    "'open",
    "\"open",
    "12:30",
    "a:",
    "@x",
    "%x",
    "a\tb",
];
const KEYS: &[&str] = &[
    "a",
    "b",
    "name",
    "x-y",
    "app.kubernetes.io/name",
    "1",
    "y",
    "null",
    "\"q k\"",
    "'s'",
    "a b",
    "-k",
    "?k",
    "a:b",
    "k#",
    "_k",
    "b",
];

/// Scalars and keys the fast reader takes, so that deep documents exercise it.
const TAME_SCALARS: &[&str] = &[
    "v1",
    "5s",
    "100ms",
    "90",
    "-3",
    "0",
    "y",
    "No",
    "~",
    "null",
    "'quoted'",
    "'it''s'",
    "\"dq\"",
    "\"\\u00e9\\t\"",
    "a b",
    "a#b",
    "-x",
    "é",
    "/p",
    "x.y",
    "1.5",
    "007",
    "reviews",
];
const TAME_KEYS: &[&str] = &[
    "a",
    "b",
    "name",
    "x-y",
    "app.kubernetes.io/name",
    "\"q k\"",
    "'s'",
    "_k",
    "c",
    "d",
];

fn node(
    scalars: &'static [&'static str],
    keys: &'static [&'static str],
) -> impl Strategy<Value = Node> {
    let leaf = prop::sample::select(scalars).prop_map(Node::Scalar);
    leaf.prop_recursive(5, 40, 5, move |inner| {
        prop_oneof![
            (
                any::<u8>(),
                prop::collection::vec((prop::sample::select(keys), inner.clone()), 0..5)
            )
                .prop_map(|(s, e)| Node::Map(s, e)),
            (any::<u8>(), prop::collection::vec(inner, 0..5)).prop_map(|(s, e)| Node::Seq(s, e)),
        ]
    })
}

fn flow(n: &Node, out: &mut String) {
    match n {
        Node::Scalar(s) => out.push_str(s),
        Node::Map(_, entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                flow(v, out);
            }
            out.push('}');
        }
        Node::Seq(_, items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(v, out);
            }
            out.push(']');
        }
    }
}

fn is_block(n: &Node) -> bool {
    match n {
        Node::Scalar(_) => false,
        Node::Map(s, e) => s & 1 == 0 && !e.is_empty(),
        Node::Seq(s, e) => s & 1 == 0 && !e.is_empty(),
    }
}

/// Writes `n` in block style at `indent` (the caller has written what precedes it).
fn block(n: &Node, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match n {
        Node::Map(style, entries) => {
            let step = 1 + usize::from(style >> 4 & 3);
            for (k, v) in entries {
                out.push_str(&pad);
                out.push_str(k);
                out.push(':');
                if is_block(v) {
                    out.push('\n');
                    let same = matches!(v, Node::Seq(s, _) if s & 2 != 0);
                    block(v, if same { indent } else { indent + step }, out);
                } else {
                    out.push(' ');
                    flow(v, out);
                    if style & 8 != 0 {
                        out.push_str("  # c");
                    }
                    out.push('\n');
                }
                if style & 64 != 0 {
                    out.push_str("\n# between\n");
                }
            }
        }
        Node::Seq(style, items) => {
            for v in items {
                out.push_str(&pad);
                out.push('-');
                match v {
                    Node::Map(s, e) if is_block(v) && s & 4 != 0 => {
                        // `- key: value`, the rest of the mapping at the key's column.
                        let mut inner = String::new();
                        block(&Node::Map(*s, e.clone()), indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(&inner[indent + 2..]);
                    }
                    _ if is_block(v) => {
                        out.push('\n');
                        block(v, indent + 1 + usize::from(style >> 4 & 3), out);
                    }
                    _ => {
                        out.push(' ');
                        flow(v, out);
                        out.push('\n');
                    }
                }
            }
        }
        Node::Scalar(_) => {
            out.push_str(&pad);
            flow(n, out);
            out.push('\n');
        }
    }
}

fn text_of(docs: &[Node], lead: bool) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 || lead {
            out.push_str("---\n");
        }
        if is_block(d) {
            block(d, 0, &mut out);
        } else {
            flow(d, &mut out);
            out.push('\n');
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn generated_documents_read_as_serde_saphyr_reads_them(
        docs in prop::collection::vec(node(SCALARS, KEYS), 1..4),
        lead in any::<bool>(),
    ) {
        let text = text_of(&docs, lead);
        prop_assert!(agrees(&text).is_ok(), "{}", agrees(&text).unwrap_err());
    }

    #[test]
    fn generated_plain_documents_read_as_serde_saphyr_reads_them(
        docs in prop::collection::vec(node(TAME_SCALARS, TAME_KEYS), 1..4),
        lead in any::<bool>(),
    ) {
        let text = text_of(&docs, lead);
        prop_assert!(agrees(&text).is_ok(), "{}", agrees(&text).unwrap_err());
    }

    #[test]
    fn mutated_documents_read_as_serde_saphyr_reads_them(
        seed in 0usize..3,
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..6, prop::sample::select(&[" ", "  ", ":", "- ", "#", "{", "}", "[", "]", ",", "'", "\"", "\n", "---\n", "\\", "a", "1", ".", "~"][..])), 1..4),
    ) {
        let seeds = [
            include_str!("../../../../examples/bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml"),
            include_str!("../../../../examples/bookinfo/networking/destination-rule-all.yaml"),
            include_str!("../../../../examples/bookinfo/security/authorization-policies.yaml"),
        ];
        let mut text = seeds[seed].to_owned();
        for (at, op, s) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            match op {
                0 | 1 => text.insert_str(i, s),
                2 if i < text.len() => {
                    let mut j = i + 1;
                    while !text.is_char_boundary(j) {
                        j += 1;
                    }
                    text.replace_range(i..j, "");
                }
                3 => {
                    // Indent or dedent the line `i` is on.
                    let start = text[..i].rfind('\n').map_or(0, |p| p + 1);
                    if text[start..].starts_with(' ') {
                        text.remove(start);
                    } else {
                        text.insert(start, ' ');
                    }
                }
                _ => text.insert_str(i, s),
            }
        }
        prop_assert!(agrees(&text).is_ok(), "{}", agrees(&text).unwrap_err());
    }
}

#[test]
fn generated_plain_documents_take_the_fast_path() {
    // The generator is not vacuous: documents of unambiguous keys and scalars are read.
    let doc = Node::Map(
        0,
        vec![
            ("name", Node::Scalar("v1")),
            (
                "b",
                Node::Seq(
                    2,
                    vec![
                        Node::Map(
                            4,
                            vec![("a", Node::Scalar("5s")), ("x-y", Node::Scalar("-3"))],
                        ),
                        Node::Scalar("/p"),
                    ],
                ),
            ),
            ("a", Node::Map(1, vec![("a", Node::Scalar("'it''s'"))])),
        ],
    );
    let text = text_of(&[doc.clone(), doc], true);
    assert_eq!(read(&text).len(), 2, "{text}");
}

#[test]
fn a_large_text_read_document_by_document_or_in_halves_reads_as_one() {
    let doc = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: a}\nspec:\n  host: a\n  subsets:\n  - {name: v1, labels: {version: v1}}\n---\n";
    let text = doc.repeat(super::PARALLEL_BYTES / doc.len() + 10);
    let whole = super::documents(&text).unwrap();
    let mut streamed = Vec::new();
    let (n, _) = super::for_each_document(&text, |d| streamed.push(d)).unwrap();
    assert_eq!((n, &streamed), (whole.len(), &whole));
    let (a, b) = super::halves(&text).unwrap();
    assert!(b.starts_with("---\n"));
    let mut halves = super::documents(a).unwrap();
    halves.extend(super::documents(b).unwrap());
    assert_eq!(halves, whole);
    // Outside the subset half-way: the documents before it were handed over, then `None`.
    let mut odd = doc.repeat(3);
    odd.push_str("kind: X\nspec: &a {b: 1}\n");
    let mut seen = 0;
    assert!(super::for_each_document(&odd, |_| seen += 1).is_none());
    assert_eq!(seen, 3);
    assert!(super::halves("a: 1\n").is_none());
}
