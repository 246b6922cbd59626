//! A reader for the plain subset of YAML that configuration is written in, ten times faster
//! than serde-saphyr, which stays the reference: anything outside the subset is left to it.
//!
//! Why it exists: a full reload of 1,000 VirtualServices and 1,000 DestinationRules (670 KB)
//! must be validated and swapped in ≤ 50 ms while the service is loaded. serde-saphyr reads
//! that text into `serde_json::Value`s in about 78 ms on an idle core (its event parser alone
//! takes 31 ms), so the figure could not be met with it on the request path of a reload. This
//! reader takes about 5 ms for the same text (`cargo run --release --example bench -- routing`
//! has the measured reload times; the README the figures).
//!
//! What it reads, exactly as serde-saphyr reads it (a differential test checks both on
//! generated and mutated documents, and on every YAML file of the repository):
//! - `---`-separated documents, `#` comments, blank lines;
//! - block mappings (keys of `[A-Za-z0-9_./-]` that resolve to strings, or quoted keys), block
//!   sequences (also at the indentation of the key that holds them, and `- key: value` compact
//!   mappings);
//! - flow mappings and sequences closed on their line (`{name: v1, labels: {version: v1}}`);
//! - plain, single-quoted and double-quoted scalars on one line; plain scalars resolve as
//!   serde-saphyr resolves them (YAML 1.1 booleans, `null` and `~`, decimal integers; any
//!   other plain scalar that may be a number is resolved by serde-saphyr itself).
//!
//! Anything else — anchors, aliases, tags, block scalars (`|`, `>`), multi-line plain or
//! quoted scalars, multi-line flow collections, complex keys, directives, duplicate keys, tabs,
//! carriage returns, anything serde-saphyr would reject — makes [`documents`] return `None`,
//! and the caller parses the text with serde-saphyr, whose result or error is the answer. So
//! this reader never changes what a file means or how an invalid one is reported; it only
//! takes the common case off the slow path.

use std::borrow::Cow;

use self::scalar::{double_quoted, is_key_byte, plain_key, scalar_value, single_quoted};
use super::{MAX_DEPTH, MAX_DOCUMENTS, MAX_NODES, node::Node};

/// The text uses YAML outside the subset (or is invalid): read it with serde-saphyr.
#[derive(Debug)]
struct Skip;

type Read<T> = Result<T, Skip>;

/// One line with content: its indentation (spaces) and the text after it, trailing spaces
/// removed.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The documents of `text` (empty ones left out, as serde-saphyr's multi-document reader
/// leaves them out), or `None` when serde-saphyr must read it.
pub(crate) fn documents(text: &str) -> Option<Vec<Node<'_>>> {
    let mut docs = Vec::new();
    read_documents(text, &mut |d| docs.push(d)).ok()?;
    Some(docs)
}

/// Reads `text` and hands each document to `each` as soon as it is read, so that only one
/// document's tree is alive at a time; returns the documents and nodes read, or `None` when
/// the text leaves the subset — `each` may then have seen the documents before that point.
pub(crate) fn for_each_document<'t>(
    text: &'t str,
    mut each: impl FnMut(Node<'t>),
) -> Option<(usize, usize)> {
    read_documents(text, &mut each).ok()
}

/// Where a text of at least [`PARALLEL_BYTES`] can be cut in two at a document boundary (a
/// `---` line, always one in YAML) near its middle.
pub(crate) fn halves(text: &str) -> Option<(&str, &str)> {
    if text.len() < PARALLEL_BYTES {
        return None;
    }
    let half = text.len() / 2;
    let at = text.as_bytes()[half..]
        .windows(5)
        .position(|w| w == b"\n---\n")?;
    Some(text.split_at(half + at + 1))
}

/// Texts at least this long are read and converted in two halves on two threads, on a
/// machine with two cores or more (a full reload of 2,000 documents is 670 KB).
pub(crate) const PARALLEL_BYTES: usize = 256 * 1024;

/// Reads the documents of `text` into `each`; the number of documents and nodes read.
fn read_documents<'t>(text: &'t str, each: &mut dyn FnMut(Node<'t>)) -> Read<(usize, usize)> {
    check_characters(text)?;
    let mut docs = 0;
    let mut lines: Vec<Line<'_>> = Vec::new();
    let mut nodes = 0;
    for raw in text.split('\n') {
        let indent = raw.len() - raw.trim_start_matches(' ').len();
        let content = raw[indent..].trim_end_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if indent == 0 {
            if let Some(after) = content.strip_prefix("---") {
                let after = after.trim_start_matches(' ');
                if after.is_empty() || (after.starts_with('#') && content.len() > 3 + after.len()) {
                    finish(&mut lines, each, &mut docs, &mut nodes)?;
                    continue;
                }
                return Err(Skip);
            }
            if content.starts_with("...") || content.starts_with('%') {
                return Err(Skip);
            }
        }
        lines.push(Line {
            indent,
            text: content,
        });
    }
    finish(&mut lines, each, &mut docs, &mut nodes)?;
    Ok((docs, nodes))
}

/// Reads the lines of one document (if any) and starts the next.
fn finish<'a>(
    lines: &mut Vec<Line<'a>>,
    each: &mut dyn FnMut(Node<'a>),
    docs: &mut usize,
    nodes: &mut usize,
) -> Read<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut p = Parser {
        lines: std::mem::take(lines),
        at: 0,
        depth: 0,
        nodes: *nodes,
    };
    let value = p.block_node(-1)?;
    if p.at != p.lines.len() || value == Node::Null {
        return Err(Skip);
    }
    *nodes = p.nodes;
    *lines = p.lines;
    lines.clear();
    *docs += 1;
    if *docs > MAX_DOCUMENTS {
        return Err(Skip);
    }
    each(value);
    Ok(())
}

/// Tabs, carriage returns, byte-order marks, control characters and YAML 1.1 line breaks
/// (NEL, LS, PS) are left to serde-saphyr.
fn check_characters(text: &str) -> Read<()> {
    if text.bytes().any(|b| (b < 0x20 && b != b'\n') || b == 0x7f) {
        return Err(Skip);
    }
    if !text.is_ascii()
        && text.chars().any(|c| {
            matches!(
                c,
                '\u{80}'
                    ..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
        })
    {
        return Err(Skip);
    }
    Ok(())
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
    depth: usize,
    nodes: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    fn node(&mut self) -> Read<()> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Skip);
        }
        Ok(())
    }

    fn enter(&mut self) -> Read<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Skip);
        }
        Ok(())
    }

    /// The node on the lines indented more than `parent` (null when there are none).
    fn block_node(&mut self, parent: isize) -> Read<Node<'a>> {
        let Some(line) = self.peek() else {
            return Ok(Node::Null);
        };
        if line.indent as isize <= parent {
            return Ok(Node::Null);
        }
        let n = line.indent;
        if is_item(line.text) {
            return self.sequence(n);
        }
        if entry(line.text)?.is_some() {
            return self.mapping(n);
        }
        self.at += 1;
        let value = self.inline(line.text)?;
        self.ends_value(parent)?;
        Ok(value)
    }

    /// A one-line value must not continue on a line indented more than `indent`.
    fn ends_value(&self, indent: isize) -> Read<()> {
        match self.peek() {
            Some(next) if next.indent as isize > indent => Err(Skip),
            _ => Ok(()),
        }
    }

    /// The block mapping whose keys are at indentation `n` (the current line is one).
    fn mapping(&mut self, n: usize) -> Read<Node<'a>> {
        self.enter()?;
        let mut map = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < n {
                break;
            }
            if line.indent > n || is_item(line.text) {
                return Err(Skip);
            }
            let Some((key, rest)) = entry(line.text)? else {
                return Err(Skip);
            };
            self.at += 1;
            let value = self.value_of_key(rest, n)?;
            self.node()?;
            map.push((key, value));
        }
        distinct(&map)?;
        self.depth -= 1;
        self.node()?;
        Ok(Node::Map(map))
    }

    /// The value after `key:` at indentation `n`: on the line, on the lines below, or a
    /// sequence at the key's own indentation.
    fn value_of_key(&mut self, rest: &'a str, n: usize) -> Read<Node<'a>> {
        let rest = rest.trim_start_matches(' ');
        if !rest.is_empty() && !rest.starts_with('#') {
            let value = self.inline(rest)?;
            self.ends_value(n as isize)?;
            return Ok(value);
        }
        match self.peek() {
            Some(next) if next.indent > n => self.block_node(n as isize),
            Some(next) if next.indent == n && is_item(next.text) => self.sequence(n),
            _ => Ok(Node::Null),
        }
    }

    /// The block sequence whose `-` are at indentation `n` (the current line is one).
    fn sequence(&mut self, n: usize) -> Read<Node<'a>> {
        self.enter()?;
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < n {
                break;
            }
            if line.indent > n {
                return Err(Skip);
            }
            if !is_item(line.text) {
                break;
            }
            let after = &line.text[1..];
            let content = after.trim_start_matches(' ');
            let item = if content.is_empty() || content.starts_with('#') {
                self.at += 1;
                self.block_node(n as isize)?
            } else if is_item(content) {
                return Err(Skip);
            } else if entry(content)?.is_some() {
                // `- key: value`: a mapping whose keys are at the column of `key`.
                let col = n + 1 + (after.len() - content.len());
                self.lines[self.at] = Line {
                    indent: col,
                    text: content,
                };
                self.mapping(col)?
            } else {
                self.at += 1;
                let value = self.inline(content)?;
                self.ends_value(n as isize)?;
                value
            };
            self.node()?;
            items.push(item);
        }
        self.depth -= 1;
        self.node()?;
        Ok(Node::Seq(items))
    }

    /// A node written on the rest of one line (a flow collection, a quoted or a plain
    /// scalar), with an optional comment after it.
    fn inline(&mut self, text: &'a str) -> Read<Node<'a>> {
        let bytes = text.as_bytes();
        match bytes[0] {
            b'{' | b'[' | b'"' | b'\'' => {
                let mut at = 0;
                let value = self.flow_node(text, &mut at)?;
                let rest = &text[at..];
                let trimmed = rest.trim_start_matches(' ');
                if trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len()) {
                    Ok(value)
                } else {
                    Err(Skip)
                }
            }
            _ => {
                if !plain_start(bytes) {
                    return Err(Skip);
                }
                let end = comment_start(bytes).unwrap_or(bytes.len());
                let scalar = text[..end].trim_end_matches(' ');
                let b = scalar.as_bytes();
                if b.last() == Some(&b':') || b.windows(2).any(|w| w == b": ") {
                    return Err(Skip);
                }
                scalar_value(scalar)
            }
        }
    }

    /// A node of a flow collection (or a quoted scalar) starting at `text[*at]`; `*at` is left
    /// after it.
    fn flow_node(&mut self, text: &'a str, at: &mut usize) -> Read<Node<'a>> {
        let bytes = text.as_bytes();
        skip_spaces(bytes, at);
        let Some(&first) = bytes.get(*at) else {
            return Err(Skip);
        };
        match first {
            b'{' => {
                self.enter()?;
                *at += 1;
                let mut map = Vec::new();
                skip_spaces(bytes, at);
                if bytes.get(*at) == Some(&b'}') {
                    *at += 1;
                } else {
                    loop {
                        skip_spaces(bytes, at);
                        let key = self.flow_key(text, at)?;
                        skip_spaces(bytes, at);
                        let value = self.flow_node(text, at)?;
                        self.node()?;
                        map.push((key, value));
                        if close(bytes, at, b'}')? {
                            break;
                        }
                    }
                }
                distinct(&map)?;
                self.depth -= 1;
                self.node()?;
                Ok(Node::Map(map))
            }
            b'[' => {
                self.enter()?;
                *at += 1;
                let mut items = Vec::new();
                skip_spaces(bytes, at);
                if bytes.get(*at) == Some(&b']') {
                    *at += 1;
                } else {
                    loop {
                        let item = self.flow_node(text, at)?;
                        self.node()?;
                        items.push(item);
                        if close(bytes, at, b']')? {
                            break;
                        }
                    }
                }
                self.depth -= 1;
                self.node()?;
                Ok(Node::Seq(items))
            }
            b'"' => Ok(Node::Str(double_quoted(text, at)?)),
            b'\'' => Ok(Node::Str(single_quoted(text, at)?)),
            _ => {
                let rest = &bytes[*at..];
                // In a flow collection `-`, `?` and `:` start a plain scalar only before a
                // character that is neither a space nor a flow indicator.
                if !plain_start(rest)
                    || (matches!(rest[0], b'-' | b'?' | b':')
                        && matches!(rest.get(1), Some(b',' | b'[' | b']' | b'{' | b'}')))
                {
                    return Err(Skip);
                }
                let start = *at;
                while let Some(&b) = bytes.get(*at) {
                    if matches!(b, b',' | b']' | b'}') {
                        break;
                    }
                    if matches!(b, b'[' | b'{' | b':') || (b == b'#' && bytes[*at - 1] == b' ') {
                        return Err(Skip);
                    }
                    *at += 1;
                }
                let scalar = text[start..*at].trim_end_matches(' ');
                if scalar.is_empty() {
                    return Err(Skip);
                }
                scalar_value(scalar)
            }
        }
    }

    /// A key of a flow mapping and its `: `.
    fn flow_key(&mut self, text: &'a str, at: &mut usize) -> Read<Cow<'a, str>> {
        let bytes = text.as_bytes();
        let key = match bytes.get(*at) {
            Some(b'"') => double_quoted(text, at)?,
            Some(b'\'') => single_quoted(text, at)?,
            _ => {
                let start = *at;
                while bytes.get(*at).is_some_and(|b| is_key_byte(*b)) {
                    *at += 1;
                }
                Cow::Borrowed(plain_key(&text[start..*at])?)
            }
        };
        skip_spaces(bytes, at);
        if bytes.get(*at) != Some(&b':') || bytes.get(*at + 1) != Some(&b' ') {
            return Err(Skip);
        }
        *at += 2;
        skip_spaces(bytes, at);
        // `{a: , b: c}` (a null value) and `{a: }` are left to serde-saphyr.
        if matches!(bytes.get(*at), None | Some(b',' | b'}' | b']')) {
            return Err(Skip);
        }
        Ok(key)
    }
}

/// After an entry of a flow collection: `,` (another entry follows) or the closing bracket
/// (`true`). A trailing comma, a line end and anything else are left to serde-saphyr.
fn close(bytes: &[u8], at: &mut usize, closing: u8) -> Read<bool> {
    skip_spaces(bytes, at);
    match bytes.get(*at) {
        Some(&b) if b == closing => {
            *at += 1;
            Ok(true)
        }
        Some(b',') => {
            *at += 1;
            skip_spaces(bytes, at);
            if matches!(bytes.get(*at), None | Some(b',' | b']' | b'}')) {
                return Err(Skip);
            }
            Ok(false)
        }
        _ => Err(Skip),
    }
}

/// Mappings have distinct keys (a duplicate is serde-saphyr's to report).
fn distinct(entries: &[(Cow<'_, str>, Node<'_>)]) -> Read<()> {
    let dup = if entries.len() <= 16 {
        entries
            .iter()
            .enumerate()
            .any(|(i, (k, _))| entries[..i].iter().any(|(j, _)| j == k))
    } else {
        let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
        keys.sort_unstable();
        keys.windows(2).any(|w| w[0] == w[1])
    };
    if dup { Err(Skip) } else { Ok(()) }
}

fn skip_spaces(bytes: &[u8], at: &mut usize) {
    while bytes.get(*at) == Some(&b' ') {
        *at += 1;
    }
}

/// A block sequence entry: `-` alone or followed by a space.
fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// Where a comment starts in a plain scalar's line (`#` after a space).
fn comment_start(bytes: &[u8]) -> Option<usize> {
    (1..bytes.len()).find(|&i| bytes[i] == b'#' && bytes[i - 1] == b' ')
}

/// Whether a plain scalar may start with these bytes: not an indicator (`-`, `?` and `:` may
/// start one when a non-space follows).
fn plain_start(bytes: &[u8]) -> bool {
    match bytes.first() {
        None => false,
        Some(b'-' | b'?' | b':') => bytes.get(1).is_some_and(|b| *b != b' '),
        Some(
            b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@' | b'`' | b',' | b'[' | b']' | b'{'
            | b'}' | b'#' | b'"' | b'\'',
        ) => false,
        Some(_) => true,
    }
}

/// A block mapping entry: `(key, the text after its colon)`, `None` when the line is not an
/// entry; keys the subset does not read are `Skip`.
fn entry(text: &str) -> Read<Option<(Cow<'_, str>, &str)>> {
    let bytes = text.as_bytes();
    match bytes[0] {
        b'"' | b'\'' => {
            let mut at = 0;
            let key = if bytes[0] == b'"' {
                double_quoted(text, &mut at)
            } else {
                single_quoted(text, &mut at)
            };
            let Ok(key) = key else {
                return Err(Skip);
            };
            skip_spaces(bytes, &mut at);
            if bytes.get(at) == Some(&b':') && matches!(bytes.get(at + 1), None | Some(b' ')) {
                return Ok(Some((key, &text[at + 1..])));
            }
            Ok(None)
        }
        b'{' | b'[' => Ok(None),
        _ if !plain_start(bytes) => Err(Skip),
        _ => {
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b':' if matches!(bytes.get(i + 1), None | Some(b' ')) => {
                        let key = plain_key(text[..i].trim_end_matches(' '))?;
                        return Ok(Some((Cow::Borrowed(key), &text[i + 1..])));
                    }
                    b'#' if i > 0 && bytes[i - 1] == b' ' => return Ok(None),
                    _ => i += 1,
                }
            }
            Ok(None)
        }
    }
}

mod scalar;
#[cfg(test)]
mod tests;
