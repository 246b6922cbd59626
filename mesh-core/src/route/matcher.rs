//! Matching one request against a route's conditions (Istio's `HTTPMatchRequest`).

use std::fmt;

use http::{HeaderMap, HeaderName, Method};

/// Longest regex accepted: 1,024 characters, Istio's limit.
pub const MAX_REGEX_LEN: usize = 1024;

/// The parts of a request routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string, without `?` (empty when there is none).
    pub query: &'a str,
    /// The request's authority (`reviews:9080`), as the client wrote it.
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The destination port.
    pub port: u16,
    /// The headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// The view of `req`, sent to `port`.
    pub fn of<B>(req: &'a http::Request<B>, port: u16) -> Self {
        let uri = req.uri();
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
        });
        Self {
            method: req.method(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            authority,
            scheme: uri.scheme_str().unwrap_or("http"),
            port,
            headers: req.headers(),
        }
    }
}

/// An anchored RE2-style regular expression: it must match the **whole** value (Envoy's
/// `safe_regex` semantics, which Istio's `regex` fields use), and `\d`, `\w`, `\s` are ASCII
/// classes as in RE2.
#[derive(Clone)]
pub struct Re2 {
    source: String,
    regex: regex::bytes::Regex,
}

impl Re2 {
    /// Compiles `pattern` as a full match. Errors say why (bad syntax, too long, empty).
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("regex must not be empty".into());
        }
        if pattern.len() > MAX_REGEX_LEN {
            return Err(format!(
                "regex is {} characters long, over Istio's limit of {MAX_REGEX_LEN}",
                pattern.len()
            ));
        }
        let regex = regex::bytes::RegexBuilder::new(&format!("^(?:{pattern})$"))
            // RE2's Perl classes are ASCII: `\d` is [0-9], not every Unicode digit.
            .unicode(false)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("invalid regex {pattern:?}: {}", first_line(&e.to_string())))?;
        Ok(Self {
            source: pattern.to_owned(),
            regex,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &[u8]) -> bool {
        self.regex.is_match(value)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Replaces every match in `value` with `with` (`\1` or `$1` name groups).
    pub(crate) fn unanchored_replace(&self, value: &str, with: &str) -> Option<String> {
        // Rewrites match anywhere: compile unanchored on demand (rewrites are rare).
        let re = regex::RegexBuilder::new(&self.source).build().ok()?;
        Some(re.replace_all(value, with).into_owned())
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

impl fmt::Debug for Re2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Re2({:?})", self.source)
    }
}

impl PartialEq for Re2 {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Istio's `StringMatch`: exact, prefix or (anchored) regex.
#[derive(Clone, Debug, PartialEq)]
pub enum StringMatcher {
    /// The whole value.
    Exact(String),
    /// A prefix of the value.
    Prefix(String),
    /// A full match of a regular expression.
    Regex(Re2),
}

impl StringMatcher {
    /// Whether `value` matches; `ignore_case` applies to exact and prefix (ASCII).
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            StringMatcher::Exact(e) if ignore_case => e.eq_ignore_ascii_case(value),
            StringMatcher::Exact(e) => e == value,
            StringMatcher::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StringMatcher::Prefix(p) => value.starts_with(p.as_str()),
            StringMatcher::Regex(r) => r.is_match(value.as_bytes()),
        }
    }

    /// The length a prefix match consumes (what `rewrite.uri` replaces); `None` for exact and
    /// regex matches, which consume the whole value.
    pub fn prefix_len(&self) -> Option<usize> {
        match self {
            StringMatcher::Prefix(p) => Some(p.len()),
            _ => None,
        }
    }
}

impl fmt::Display for StringMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatcher::Exact(e) => write!(f, "exact {e:?}"),
            StringMatcher::Prefix(p) => write!(f, "prefix {p:?}"),
            StringMatcher::Regex(r) => write!(f, "regex {:?}", r.as_str()),
        }
    }
}

/// A header condition: present with any value, or a value that matches.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderMatcher {
    /// The header is present (Istio's empty `StringMatch`, `{}`).
    Present,
    /// A value matches.
    Value(StringMatcher),
}

/// One `match` block of a route: every condition set must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMatch {
    /// The block's `name`, if it has one.
    pub name: Option<String>,
    /// The path (without the query string).
    pub uri: Option<StringMatcher>,
    /// `http` or `https`.
    pub scheme: Option<StringMatcher>,
    /// The method.
    pub method: Option<StringMatcher>,
    /// The request's authority.
    pub authority: Option<StringMatcher>,
    /// Headers that must match (names lowercase).
    pub headers: Vec<(HeaderName, HeaderMatcher)>,
    /// Headers that must not match.
    pub without_headers: Vec<(HeaderName, HeaderMatcher)>,
    /// Query parameters that must match.
    pub query_params: Vec<(String, StringMatcher)>,
    /// The destination port.
    pub port: Option<u16>,
    /// `uri` exact and prefix compare case-insensitively.
    pub ignore_uri_case: bool,
}

impl RequestMatch {
    /// Whether the request matches every condition. (The request path: no explanation is
    /// built; [`mismatch`](Self::mismatch) says why in words.)
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.port.is_some_and(|p| p != req.port) {
            return false;
        }
        if self
            .method
            .as_ref()
            .is_some_and(|m| !m.matches(req.method.as_str(), false))
        {
            return false;
        }
        if self
            .uri
            .as_ref()
            .is_some_and(|m| !m.matches(req.path, self.ignore_uri_case))
        {
            return false;
        }
        if self
            .scheme
            .as_ref()
            .is_some_and(|m| !m.matches(req.scheme, false))
        {
            return false;
        }
        if self
            .authority
            .as_ref()
            .is_some_and(|m| !m.matches(req.authority, false))
        {
            return false;
        }
        if !self
            .headers
            .iter()
            .all(|(n, w)| header_holds(req.headers, n, w))
        {
            return false;
        }
        if self
            .without_headers
            .iter()
            .any(|(n, w)| header_holds(req.headers, n, w))
        {
            return false;
        }
        self.query_params
            .iter()
            .all(|(k, want)| query_value(req.query, k).is_some_and(|v| want.matches(&v, false)))
    }

    /// The first condition the request fails, in words (for `mesh explain`), or `None` when
    /// it matches.
    pub fn mismatch(&self, req: &RequestView<'_>) -> Option<String> {
        if let Some(port) = self.port {
            if port != req.port {
                return Some(format!("port is {}, wants {port}", req.port));
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(req.method.as_str(), false) {
                return Some(format!("method is {}, wants {m}", req.method));
            }
        }
        if let Some(m) = &self.uri {
            if !m.matches(req.path, self.ignore_uri_case) {
                let case = if self.ignore_uri_case {
                    " (ignoring case)"
                } else {
                    ""
                };
                return Some(format!("uri {:?} is not {m}{case}", req.path));
            }
        }
        if let Some(m) = &self.scheme {
            if !m.matches(req.scheme, false) {
                return Some(format!("scheme is {}, wants {m}", req.scheme));
            }
        }
        if let Some(m) = &self.authority {
            if !m.matches(req.authority, false) {
                return Some(format!("authority {:?} is not {m}", req.authority));
            }
        }
        for (name, want) in &self.headers {
            if let Some(why) = header_mismatch(req.headers, name, want) {
                return Some(why);
            }
        }
        for (name, unwanted) in &self.without_headers {
            if header_mismatch(req.headers, name, unwanted).is_none() {
                return Some(format!(
                    "header {name} matches the withoutHeaders condition"
                ));
            }
        }
        for (key, want) in &self.query_params {
            match query_value(req.query, key) {
                None => return Some(format!("query parameter {key:?} is absent")),
                Some(v) if !want.matches(&v, false) => {
                    return Some(format!("query parameter {key}={v:?} is not {want}"));
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// Whether a header condition holds (the allocation-free check of the request path; a single
/// value, the common case, is matched in place).
fn header_holds(headers: &HeaderMap, name: &HeaderName, want: &HeaderMatcher) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let m = match want {
        HeaderMatcher::Present => return true,
        HeaderMatcher::Value(m) => m,
    };
    match values.next() {
        None => first.to_str().is_ok_and(|v| m.matches(v, false)),
        Some(_) => header_mismatch(headers, name, want).is_none(),
    }
}

/// Why a header fails a condition, or `None` when it holds. Several values of one header are
/// joined with `,` (as Envoy matches them).
fn header_mismatch(headers: &HeaderMap, name: &HeaderName, want: &HeaderMatcher) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Some(match want {
            HeaderMatcher::Present => format!("header {name} is absent"),
            HeaderMatcher::Value(m) => format!("header {name} is absent (wants {m})"),
        });
    };
    let m = match want {
        HeaderMatcher::Present => return None,
        HeaderMatcher::Value(m) => m,
    };
    let Ok(first) = first.to_str() else {
        return Some(format!("header {name} is not visible ASCII"));
    };
    let joined;
    let value = match values.next() {
        None => first,
        Some(second) => {
            let mut all = format!("{first},{}", second.to_str().unwrap_or(""));
            for v in values {
                all.push(',');
                all.push_str(v.to_str().unwrap_or(""));
            }
            joined = all;
            &joined
        }
    };
    if m.matches(value, false) {
        None
    } else {
        Some(format!("header {name}: {value:?} is not {m}"))
    }
}

/// The (percent-decoded) value of the first `key` in a query string; `Some("")` for `?key`.
fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        method: &'a Method,
        path: &'a str,
        query: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            query,
            authority: "reviews:9080",
            scheme: "http",
            port: 9080,
            headers,
        }
    }

    #[test]
    fn regexes_match_the_whole_value_with_ascii_classes() {
        let r = Re2::new(r"\d+").unwrap();
        assert!(r.is_match(b"123"));
        assert!(!r.is_match(b"a123"), "anchored at the start");
        assert!(!r.is_match(b"123a"), "anchored at the end");
        assert!(!r.is_match("٣".as_bytes()), "\\d is ASCII, as in RE2");
        assert!(Re2::new("(?i)jason").unwrap().is_match(b"JASON"));
        assert!(
            Re2::new("caf\u{e9}")
                .unwrap()
                .is_match("caf\u{e9}".as_bytes())
        );
        assert!(
            Re2::new("a|b").unwrap().is_match(b"b"),
            "alternation inside the anchors"
        );
        assert!(Re2::new("(").unwrap_err().contains("invalid regex"));
        assert!(Re2::new("").is_err());
        assert!(Re2::new(&"a".repeat(1025)).unwrap_err().contains("1024"));
    }

    #[test]
    fn a_match_block_needs_every_condition() {
        let mut headers = HeaderMap::new();
        headers.insert("end-user", "jason".parse().unwrap());
        let m = RequestMatch {
            uri: Some(StringMatcher::Prefix("/reviews".into())),
            headers: vec![(
                HeaderName::from_static("end-user"),
                HeaderMatcher::Value(StringMatcher::Exact("jason".into())),
            )],
            query_params: vec![("v".into(), StringMatcher::Exact("".into()))],
            ..RequestMatch::default()
        };
        let get = Method::GET;
        assert!(m.matches(&view(&get, "/reviews/1", "v", &headers)));
        assert!(m.matches(&view(&get, "/reviews/1", "a=1&v=", &headers)));
        let why = m.mismatch(&view(&get, "/ratings", "v", &headers)).unwrap();
        assert!(why.contains("uri"), "{why}");
        let why = m.mismatch(&view(&get, "/reviews/1", "", &headers)).unwrap();
        assert!(why.contains("query parameter"), "{why}");
        let empty = HeaderMap::new();
        let why = m.mismatch(&view(&get, "/reviews/1", "v", &empty)).unwrap();
        assert!(why.contains("end-user is absent"), "{why}");
        // The fast check and the explanation always agree.
        for (path, query, h) in [
            ("/reviews/1", "v", &headers),
            ("/reviews/1", "", &headers),
            ("/ratings", "v", &headers),
            ("/reviews/1", "v", &empty),
        ] {
            let v = view(&get, path, query, h);
            assert_eq!(m.matches(&v), m.mismatch(&v).is_none(), "{path}?{query}");
        }
    }

    #[test]
    fn uri_case_and_presence_and_without_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", "1".parse().unwrap());
        headers.append("x-list", "a".parse().unwrap());
        headers.append("x-list", "b".parse().unwrap());
        let get = Method::GET;
        let m = RequestMatch {
            uri: Some(StringMatcher::Exact("/API".into())),
            ignore_uri_case: true,
            headers: vec![
                (HeaderName::from_static("x-canary"), HeaderMatcher::Present),
                (
                    HeaderName::from_static("x-list"),
                    HeaderMatcher::Value(StringMatcher::Exact("a,b".into())),
                ),
            ],
            ..RequestMatch::default()
        };
        assert!(m.matches(&view(&get, "/api", "", &headers)));
        let without = RequestMatch {
            without_headers: vec![(HeaderName::from_static("x-canary"), HeaderMatcher::Present)],
            ..RequestMatch::default()
        };
        assert!(!without.matches(&view(&get, "/", "", &headers)));
        assert!(without.matches(&view(&get, "/", "", &HeaderMap::new())));
        assert_eq!(percent_decode("a%20b+c%zz"), "a b c%zz");
    }
}
