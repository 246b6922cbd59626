//! Medians over rounds, the printed table and the JSON file.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::load::Sample;

/// One measured run, reduced to numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// The round it ran in (0-based): runs of one round ran back to back, so ratios of two
    /// variants' runs in one round are paired samples.
    pub round: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: f64,
    pub steal_pct: f64,
    /// Scenario-specific figures (e.g. success_pct), medianed like the others.
    pub extra: BTreeMap<&'static str, f64>,
}

impl Run {
    pub fn from_sample(round: usize, s: &Sample) -> Self {
        Self {
            round,
            requests: s.requests,
            errors: s.errors,
            rps: s.rps(),
            p50_us: s.quantile_us(0.5),
            p99_us: s.quantile_us(0.99),
            cpu_us_per_req: s.cpu_us_per_req(),
            steal_pct: s.steal_pct,
            extra: s.extra.clone(),
        }
    }
}

/// A variant at one concurrency, over all rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub variant: String,
    pub concurrency: usize,
    /// Summed over rounds.
    pub requests: u64,
    /// Summed over rounds.
    pub errors: u64,
    /// Medians over rounds.
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_us_per_req: f64,
    /// (max − min) / median of rps over rounds, in percent.
    pub rps_spread_pct: f64,
    /// rps relative to the first variant at the same concurrency.
    pub ratio: f64,
    pub rounds: usize,
    /// Median hypervisor steal during the row's runs, in percent of all CPU time.
    pub steal_pct: f64,
    #[serde(flatten)]
    pub extra: BTreeMap<&'static str, f64>,
    /// Every run of the row, in round order (for paired ratios).
    pub runs: Vec<Run>,
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Collapses runs into rows, in the order the variants were declared.
pub fn rows(
    runs: &[(String, usize, Run)],
    variant_order: &[String],
    concurrencies: &[usize],
) -> Vec<Row> {
    let mut out = Vec::new();
    for &c in concurrencies {
        let mut first_rps = None;
        for v in variant_order {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|(name, conc, _)| name == v && *conc == c)
                .map(|(_, _, r)| r)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let rps = median(mine.iter().map(|r| r.rps).collect());
            let (lo, hi) = mine.iter().fold((f64::MAX, f64::MIN), |(lo, hi), r| {
                (lo.min(r.rps), hi.max(r.rps))
            });
            let base = *first_rps.get_or_insert(rps);
            let mut extra = BTreeMap::new();
            for key in mine[0].extra.keys() {
                extra.insert(
                    *key,
                    median(
                        mine.iter()
                            .filter_map(|r| r.extra.get(key).copied())
                            .collect(),
                    ),
                );
            }
            out.push(Row {
                variant: v.clone(),
                concurrency: c,
                requests: mine.iter().map(|r| r.requests).sum(),
                errors: mine.iter().map(|r| r.errors).sum(),
                rps,
                p50_us: median(mine.iter().map(|r| r.p50_us).collect()),
                p99_us: median(mine.iter().map(|r| r.p99_us).collect()),
                cpu_us_per_req: median(mine.iter().map(|r| r.cpu_us_per_req).collect()),
                rps_spread_pct: if rps > 0.0 {
                    (hi - lo) / rps * 100.0
                } else {
                    0.0
                },
                ratio: if base > 0.0 { rps / base } else { f64::NAN },
                rounds: mine.len(),
                steal_pct: median(mine.iter().map(|r| r.steal_pct).collect()),
                extra,
                runs: mine.iter().map(|r| (*r).clone()).collect(),
            });
        }
    }
    out
}

/// The printed table.
pub fn table(rows: &[Row]) -> String {
    let mut extra_keys: Vec<&'static str> =
        rows.iter().flat_map(|r| r.extra.keys().copied()).collect();
    extra_keys.sort();
    extra_keys.dedup();
    let mut s = String::new();
    let _ = write!(
        s,
        "{:<20} {:>4} {:>10} {:>7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>6}",
        "variant",
        "conc",
        "requests",
        "errors",
        "rps",
        "p50_us",
        "p99_us",
        "cpu_us/r",
        "spread%",
        "ratio",
        "steal%"
    );
    for k in &extra_keys {
        let _ = write!(s, " {k:>20}");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(
            s,
            "{:<20} {:>4} {:>10} {:>7} {:>9.0} {:>9.1} {:>9.1} {:>8.1} {:>7.1} {:>7.3} {:>6.1}",
            r.variant,
            r.concurrency,
            r.requests,
            r.errors,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.cpu_us_per_req,
            r.rps_spread_pct,
            r.ratio,
            r.steal_pct
        );
        for k in &extra_keys {
            match r.extra.get(k) {
                Some(v) => {
                    let _ = write!(s, " {v:>20.3}");
                }
                None => {
                    let _ = write!(s, " {:>20}", "-");
                }
            }
        }
        s.push('\n');
    }
    s
}

/// A figure an issue requires, checked against this run.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub figure: String,
    pub measured: String,
    pub pass: bool,
}

impl Check {
    pub fn new(figure: impl Into<String>, measured: impl Into<String>, pass: bool) -> Self {
        Self {
            figure: figure.into(),
            measured: measured.into(),
            pass,
        }
    }
}

pub fn checks_text(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let _ = writeln!(
            s,
            "  [{}] {}: {}",
            if c.pass { "PASS" } else { "FAIL" },
            c.figure,
            c.measured
        );
    }
    s
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub scenario: &'a str,
    pub rounds: usize,
    pub duration_s: f64,
    pub cores: usize,
    pub note: &'a str,
    pub rows: &'a [Row],
    pub checks: &'a [Check],
    /// Scenario figures that are not rows (e.g. `scale`'s change times and memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

pub fn find<'a>(rows: &'a [Row], variant: &str, concurrency: usize) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.variant == variant && r.concurrency == concurrency)
}

/// A figure computed round by round from two rows' runs of the same round (paired samples: the
/// two variants ran back to back), then summarised.
#[derive(Clone, Debug)]
pub struct Paired {
    /// One value per round both rows ran in.
    pub per_round: Vec<f64>,
}

impl Paired {
    /// `f(a's run, b's run)` for every round both ran in.
    pub fn new(a: &Row, b: &Row, f: impl Fn(&Run, &Run) -> f64) -> Self {
        let per_round = a
            .runs
            .iter()
            .filter_map(|ra| {
                b.runs
                    .iter()
                    .find(|rb| rb.round == ra.round)
                    .map(|rb| f(ra, rb))
            })
            .collect();
        Self { per_round }
    }

    pub fn median(&self) -> f64 {
        median(self.per_round.clone())
    }

    /// Round by round `self / other` (e.g. mesh's added cost over a sidecar's, per round).
    pub fn over(&self, other: &Paired) -> Paired {
        Paired {
            per_round: self
                .per_round
                .iter()
                .zip(&other.per_round)
                .map(|(a, b)| a / b)
                .collect(),
        }
    }

    /// How many rounds satisfy `pass`.
    pub fn passing(&self, pass: impl Fn(f64) -> bool) -> usize {
        self.per_round.iter().filter(|v| pass(**v)).count()
    }

    /// "median M (rounds: a b c), K/N rounds pass" for a check's measured text.
    pub fn describe(&self, precision: usize, pass: impl Fn(f64) -> bool) -> String {
        let each: Vec<String> = self
            .per_round
            .iter()
            .map(|v| format!("{v:.precision$}"))
            .collect();
        format!(
            "paired median {:.precision$} (per round: {}), {}/{} rounds pass",
            self.median(),
            each.join(" "),
            self.passing(pass),
            self.per_round.len()
        )
    }
}

/// Which rounds a paired figure must pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// The median of the per-round ratios.
    Median,
    /// Every round.
    Every,
}

/// The check "`a`'s rps ≥ `min` × `b`'s": the ratio of the medians beside the per-round paired
/// ratios, passing by `rounds`.
pub fn rps_ratio(
    figure: impl Into<String>,
    a: &Row,
    b: &Row,
    min: f64,
    precision: usize,
    rounds: Rounds,
) -> Check {
    let p = Paired::new(a, b, |x, y| x.rps / y.rps);
    let pass = match rounds {
        Rounds::Median => p.median() >= min,
        Rounds::Every => p.passing(|v| v >= min) == p.per_round.len(),
    };
    Check::new(
        figure,
        format!(
            "{:.precision$}x medians; {}",
            a.rps / b.rps,
            p.describe(precision, |v| v >= min)
        ),
        pass,
    )
}

/// The check "what `mesh` adds in CPU per request over `raw` is ≤ `limit` of what the sidecar
/// path `hop` adds over it" (the hop's own processes plus the work it causes in client and
/// backend), round by round. `what` names mesh's side ("mesh", "mesh mTLS"), `path` the hop's.
pub fn added_cpu_share(
    figure: impl Into<String>,
    what: &str,
    path: &str,
    (mesh, raw, hop): (&Row, &Row, &Row),
    limit: f64,
) -> Check {
    let added = Paired::new(mesh, raw, |m, r| m.cpu_us_per_req - r.cpu_us_per_req);
    let hop_added = Paired::new(hop, raw, |h, r| h.cpu_us_per_req - r.cpu_us_per_req);
    let ratio = added.over(&hop_added);
    Check::new(
        figure,
        format!(
            "{what} adds {:.2} us/req, {path} {:.2} us/req; {}",
            added.median(),
            hop_added.median(),
            ratio.describe(4, |v| v <= limit)
        ),
        ratio.median() <= limit,
    )
}
