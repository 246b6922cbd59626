//! What a route does to a request besides choosing its backend: faults, mirrors, header
//! operations and rewrites (validated; built from VirtualService documents or in code).

use std::{fmt, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{BackendRef, matcher::Re2};

/// A share of requests, kept as parts per million so that deciding costs one random number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percentage(u32);

impl Percentage {
    /// Every request.
    pub const ALL: Percentage = Percentage(1_000_000);
    /// No request.
    pub const NONE: Percentage = Percentage(0);

    /// `percent` (0 to 100, clamped).
    pub fn from_percent(percent: f64) -> Self {
        let ppm = (percent.clamp(0.0, 100.0) * 10_000.0).round();
        Percentage(ppm as u32)
    }

    /// As a percentage.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Draws: whether this request is in the share.
    pub fn sample(self) -> bool {
        match self.0 {
            0 => false,
            1_000_000.. => true,
            ppm => fastrand::u32(..1_000_000) < ppm,
        }
    }
}

impl fmt::Display for Percentage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

/// What an injected abort answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// An HTTP status (200 to 599).
    Http(u16),
    /// A gRPC status code (1 to 16).
    Grpc(u16),
}

/// Fault injection (Istio's `HTTPFaultInjection`): delays and aborts for a share of requests.
/// As in Envoy, the fault comes before the route's timeout and retries: an injected delay does
/// not count toward the timeout, and an injected abort is not retried.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPolicy {
    /// Wait this long before sending, for this share of requests.
    pub delay: Option<(Duration, Percentage)>,
    /// Answer at once with this, for this share of requests.
    pub abort: Option<(Abort, Percentage)>,
}

/// A copy of requests sent elsewhere, fire and forget (Istio's `mirror` / `mirrors`).
#[derive(Clone, Debug, PartialEq)]
pub struct MirrorPolicy {
    /// Where copies go.
    pub backend: BackendRef,
    /// The share of requests copied.
    pub percentage: Percentage,
}

/// Header operations on a request or a response (Istio's `HeaderOperations`): `set`
/// overwrites, `add` appends, `remove` deletes; applied in that order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append these values.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete these headers.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the operations.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// Request and response header operations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    /// On the request, before it is sent.
    pub request: HeaderOps,
    /// On the response, before the caller sees it.
    pub response: HeaderOps,
}

impl Headers {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty()
    }
}

/// How the path of a matched request is rewritten.
#[derive(Clone, Debug, PartialEq)]
pub enum UriRewrite {
    /// Replace the part the match's `uri` prefix matched (the whole path when it matched
    /// otherwise) with this (Istio's `rewrite.uri`).
    Prefix(String),
    /// Replace every match of the regex in the path (Istio's `rewrite.uriRegexRewrite`; `\1`
    /// in Istio's syntax is written `${1}` here).
    Regex {
        /// What is replaced.
        pattern: Re2,
        /// With what.
        with: String,
    },
}

/// Istio's `HTTPRewrite`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    /// The path.
    pub uri: Option<UriRewrite>,
    /// The authority (`Host`).
    pub authority: Option<String>,
}

impl Rewrite {
    /// The new path and query for `path` (`query` kept), given the length of the prefix the
    /// match consumed, if it was a prefix match.
    pub fn path(
        &self,
        path: &str,
        query: Option<&str>,
        prefix_len: Option<usize>,
    ) -> Option<String> {
        let new = match self.uri.as_ref()? {
            UriRewrite::Prefix(with) => match prefix_len {
                Some(n) if n <= path.len() => format!("{with}{}", &path[n..]),
                _ => with.clone(),
            },
            UriRewrite::Regex { pattern, with } => pattern.unanchored_replace(path, with)?,
        };
        // Istio's `/` + a rewritten empty path: never send an empty path.
        let new = if new.is_empty() { "/".to_owned() } else { new };
        Some(match query {
            Some(q) => format!("{new}?{q}"),
            None => new,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_sample_their_share() {
        assert!(Percentage::ALL.sample());
        assert!(!Percentage::NONE.sample());
        let p = Percentage::from_percent(10.0);
        let hits = (0..100_000).filter(|_| p.sample()).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert_eq!(Percentage::from_percent(0.0001).percent(), 0.0001);
        assert_eq!(Percentage::from_percent(250.0), Percentage::ALL);
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_and_keep_the_query() {
        let r = Rewrite {
            uri: Some(UriRewrite::Prefix("/v2/".into())),
            authority: None,
        };
        assert_eq!(
            r.path("/v1/reviews", Some("a=1"), Some(4)).unwrap(),
            "/v2/reviews?a=1"
        );
        assert_eq!(r.path("/exact", None, None).unwrap(), "/v2/");
        let r = Rewrite {
            uri: Some(UriRewrite::Regex {
                pattern: Re2::new("^/service/([^/]+)(/.*)$").unwrap(),
                with: "${2}/instance/${1}".into(),
            }),
            authority: None,
        };
        assert_eq!(r.path("/service/a/b", None, None).unwrap(), "/b/instance/a");
    }

    #[test]
    fn header_ops_set_add_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        let ops = HeaderOps {
            set: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("2"),
            )],
            add: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("3"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        ops.apply(&mut h);
        let a: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(a, ["2", "3"]);
        assert!(h.get("x-gone").is_none());
    }
}
