//! A strict reader of the OpenMetrics text format (the subset a Prometheus scrape of
//! counters, gauges and histograms uses), for checking the mesh's exposition: every line must
//! parse, every sample must belong to the family declared before it with a suffix its type
//! allows, label sets must be well formed and unique, histograms cumulative with a `+Inf`
//! bucket equal to `_count`, and the text must end with `# EOF`.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample: metric name (with suffix) and labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// A parsed exposition: family types and sample values.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub samples: HashMap<Key, f64>,
}

impl Exposition {
    /// The value of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = Key {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.samples.get(&key).copied()
    }

    /// The sum of `name` over samples whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                k.name == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| k.labels.get(*lk).map(String::as_str) == Some(*lv))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "gauge" => &[""],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "info" => &["_info"],
        "unknown" => &[""],
        _ => &[],
    }
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, '\\')) => value.push('\\'),
                    _ => return Err("bad escape in label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        }
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        // Digits, sign, point and exponent only: Rust's parser would also take `inf`, `nan`,
        // `infinity`, which OpenMetrics does not allow.
        _ if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) =>
        {
            s.parse().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// Parses and checks an exposition.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("exposition does not end with '# EOF'")?;
    let mut family: Option<(String, String)> = None;
    let mut seen_families = HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let rest = parts.next().unwrap_or("");
            if !valid_name(name) {
                return Err(err(format!("bad family name {name:?}")));
            }
            match kw {
                "TYPE" => {
                    if suffixes(rest).is_empty() {
                        return Err(err(format!("unknown type {rest:?}")));
                    }
                    if !seen_families.insert(name.to_owned()) {
                        return Err(err("family declared twice".into()));
                    }
                    exp.types.insert(name.to_owned(), rest.to_owned());
                    family = Some((name.to_owned(), rest.to_owned()));
                }
                "HELP" | "UNIT" => {}
                _ => return Err(err(format!("unknown descriptor {kw:?}"))),
            }
            continue;
        }
        if line.is_empty() {
            return Err(err("empty line".into()));
        }
        let (name_end, has_labels) = match line.find(['{', ' ']) {
            Some(i) => (i, line.as_bytes()[i] == b'{'),
            None => return Err(err("sample without value".into())),
        };
        let name = &line[..name_end];
        let (labels, rest) = if has_labels {
            parse_labels(&line[name_end + 1..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        let value = value.split(' ').next().unwrap_or(value); // an optional timestamp follows
        let value = parse_value(value).map_err(err)?;
        let (fname, kind) = family
            .as_ref()
            .ok_or_else(|| err("sample before any TYPE".into()))?;
        let suffix = name
            .strip_prefix(fname.as_str())
            .ok_or_else(|| err(format!("sample {name} outside family {fname}")))?;
        if !suffixes(kind).contains(&suffix) {
            return Err(err(format!("suffix {suffix:?} not allowed for a {kind}")));
        }
        if kind == "counter" && suffix == "_total" && (value.is_nan() || value < 0.0) {
            return Err(err("negative or NaN counter".into()));
        }
        let key = Key {
            name: name.to_owned(),
            labels,
        };
        if exp.samples.insert(key, value).is_some() {
            return Err(err("duplicate sample".into()));
        }
    }
    check_histograms(&exp)?;
    Ok(exp)
}

fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (fname, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: HashMap<BTreeMap<String, String>, Vec<(f64, f64)>> = HashMap::new();
        for (k, v) in &exp.samples {
            if k.name == format!("{fname}_bucket") {
                let mut labels = k.labels.clone();
                let le = labels
                    .remove("le")
                    .ok_or(format!("{fname} bucket without le"))?;
                series
                    .entry(labels)
                    .or_default()
                    .push((parse_value(&le)?, *v));
            }
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{fname}{labels:?}: buckets not cumulative"));
            }
            let inf = buckets
                .last()
                .filter(|b| b.0.is_infinite())
                .ok_or(format!("{fname}{labels:?}: no +Inf bucket"))?;
            let count = exp.samples.get(&Key {
                name: format!("{fname}_count"),
                labels: labels.clone(),
            });
            if count != Some(&inf.1) {
                return Err(format!(
                    "{fname}{labels:?}: +Inf bucket {} != count {count:?}",
                    inf.1
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_reader_rejects_what_it_must() {
    let ok = "# TYPE a counter\na_total{x=\"1\"} 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_count 2\nh_sum 1.5\n# EOF\n";
    let e = parse(ok).unwrap();
    assert_eq!(e.get("a_total", &[("x", "1")]), Some(2.0));
    for bad in [
        "# TYPE a counter\na_total 1\n",                   // no EOF
        "# TYPE a counter\na 1\n# EOF\n",                  // counter without _total
        "b_total 1\n# EOF\n",                              // no TYPE
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",       // unquoted
        "# TYPE a counter\na_total 1\na_total 2\n# EOF\n", // duplicate
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n# EOF\n", // count mismatch
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n# EOF\n",   // repeated label
        "# TYPE a gauge\na inf\n# EOF\n", // a float Rust parses but OpenMetrics does not allow
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
