//! Scalars and keys of the subset: plain scalars resolved as serde-saphyr resolves them,
//! quoted scalars closed on their line.

use std::borrow::Cow;

use super::{Read, Skip};
use crate::yaml::node::Node;

pub(super) fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/')
}

/// A plain key the subset reads: `[A-Za-z0-9_./-]` and resolving to a string.
pub(super) fn plain_key(key: &str) -> Read<&str> {
    if !key.is_empty()
        && key.bytes().all(is_key_byte)
        && !is_null(key)
        && yaml11_bool(key).is_none()
        && !may_be_number(key)
    {
        Ok(key)
    } else {
        Err(Skip)
    }
}

fn is_null(s: &str) -> bool {
    matches!(s, "~" | "null" | "Null" | "NULL")
}

/// A plain scalar's value, resolved as serde-saphyr resolves it into a `serde_json::Value`.
pub(super) fn scalar_value(s: &str) -> Read<Node<'_>> {
    if is_null(s) {
        return Ok(Node::Null);
    }
    if let Some(b) = yaml11_bool(s) {
        return Ok(Node::Bool(b));
    }
    if let Some(n) = decimal(s) {
        return Ok(n);
    }
    if may_be_number(s) {
        // A number in one of YAML's other spellings (floats, radixes, underscores, leading
        // zeros, timestamps) or a string: serde-saphyr decides. Such a scalar written alone
        // is still that plain scalar (it starts with a digit, a sign or a dot, never `---`).
        return serde_saphyr::from_str_with_options::<serde_json::Value>(s, crate::yaml::options())
            .map(Node::from)
            .map_err(|_| Skip);
    }
    Ok(Node::Str(Cow::Borrowed(s)))
}

/// YAML 1.1 booleans, as serde-saphyr reads them by default.
fn yaml11_bool(s: &str) -> Option<bool> {
    if s.len() > 5 {
        return None;
    }
    let is = |w: &str| s.eq_ignore_ascii_case(w);
    if is("true") || is("yes") || is("y") || is("on") {
        Some(true)
    } else if is("false") || is("no") || is("n") || is("off") {
        Some(false)
    } else {
        None
    }
}

/// A decimal integer without a redundant leading zero that fits 64 bits.
fn decimal(s: &str) -> Option<Node<'static>> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if digits.is_empty()
        || digits.len() > 18
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
        || (negative && digits == "0")
    {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(if negative {
        Node::I64(-(n as i64))
    } else {
        Node::U64(n)
    })
}

/// Whether a plain scalar (not null, a boolean or a plain decimal) may resolve to a number:
/// after an optional sign it starts with a digit or with a dot and a letter or digit (`.5`,
/// `.inf`), or it spells infinity or NaN. Digits with a unit that no number spelling uses
/// (`5s`, `100ms`, `1.5h`) are strings. Every other plain scalar is a string.
fn may_be_number(s: &str) -> bool {
    let word = |w: &str| s.eq_ignore_ascii_case(w);
    if s.len() <= 8 && (word("inf") || word("infinity") || word("nan")) {
        return true;
    }
    let u = s.strip_prefix(['+', '-']).unwrap_or(s).as_bytes();
    match u {
        [d, ..] if d.is_ascii_digit() => {
            let unit = u.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.')
                && u.iter().any(u8::is_ascii_alphabetic)
                && !u.iter().any(|b| b"eExXoObB".contains(b));
            !unit
        }
        [b'.', c, ..] => c.is_ascii_alphanumeric(),
        _ => false,
    }
}

/// A double-quoted scalar closed on its line, starting at `text[*at]`.
pub(super) fn double_quoted<'a>(text: &'a str, at: &mut usize) -> Read<Cow<'a, str>> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let start = *at + 1;
    let (mut i, mut run) = (start, start);
    loop {
        let Some(&b) = bytes.get(i) else {
            return Err(Skip);
        };
        match b {
            b'"' => {
                *at = i + 1;
                if out.is_empty() && run == start {
                    return Ok(Cow::Borrowed(&text[run..i]));
                }
                out.push_str(&text[run..i]);
                return Ok(Cow::Owned(out));
            }
            b'\\' => {
                out.push_str(&text[run..i]);
                let Some(&e) = bytes.get(i + 1) else {
                    return Err(Skip);
                };
                i += 2;
                let c = match e {
                    b'0' => '\0',
                    b'a' => '\u{7}',
                    b'b' => '\u{8}',
                    b't' => '\t',
                    b'n' => '\n',
                    b'v' => '\u{b}',
                    b'f' => '\u{c}',
                    b'r' => '\r',
                    b'e' => '\u{1b}',
                    b' ' => ' ',
                    b'"' => '"',
                    b'/' => '/',
                    b'\\' => '\\',
                    b'x' | b'u' | b'U' => {
                        let len = match e {
                            b'x' => 2,
                            b'u' => 4,
                            _ => 8,
                        };
                        let hex = text.get(i..i + len).ok_or(Skip)?;
                        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(Skip);
                        }
                        i += len;
                        u32::from_str_radix(hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or(Skip)?
                    }
                    _ => return Err(Skip),
                };
                out.push(c);
                run = i;
            }
            _ => i += 1,
        }
    }
}

/// A single-quoted scalar closed on its line (`''` is a quote), starting at `text[*at]`.
pub(super) fn single_quoted<'a>(text: &'a str, at: &mut usize) -> Read<Cow<'a, str>> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let start = *at + 1;
    let (mut i, mut run) = (start, start);
    loop {
        match bytes.get(i) {
            None => return Err(Skip),
            Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                out.push_str(&text[run..=i]);
                i += 2;
                run = i;
            }
            Some(b'\'') => {
                *at = i + 1;
                if out.is_empty() && run == start {
                    return Ok(Cow::Borrowed(&text[run..i]));
                }
                out.push_str(&text[run..i]);
                return Ok(Cow::Owned(out));
            }
            Some(_) => i += 1,
        }
    }
}
