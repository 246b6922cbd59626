//! The SVG chart written beside `--json`: for every row (variant at a concurrency) three bars —
//! CPU µs per request, p50 and p99 latency — each panel scaled to its own largest value, so a
//! sidecar's cost and mesh's read side by side. Plain SVG text: no browser, no plotting crate.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::report::Row;

/// What the chart reads of a row (also from a written `--json` report: `bench chart FILE`).
#[derive(Debug, Deserialize)]
pub struct Bar {
    pub variant: String,
    pub concurrency: usize,
    pub cpu_us_per_req: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl From<&Row> for Bar {
    fn from(r: &Row) -> Self {
        Self {
            variant: r.variant.clone(),
            concurrency: r.concurrency,
            cpu_us_per_req: r.cpu_us_per_req,
            p50_us: r.p50_us,
            p99_us: r.p99_us,
        }
    }
}

/// Rewrites the chart of a report written by `--json`, beside it (`PATH.svg`).
pub fn from_report(path: &std::path::Path) -> Result<std::path::PathBuf, String> {
    #[derive(Deserialize)]
    struct Report {
        scenario: String,
        rounds: usize,
        rows: Vec<Bar>,
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let r: Report = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = path.with_extension("svg");
    let title = format!("mesh bench: {} ({} rounds, medians)", r.scenario, r.rounds);
    std::fs::write(&out, svg(&title, &r.rows)).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

const ROW_H: f64 = 22.0;
const LABEL_W: f64 = 190.0;
const PANEL_W: f64 = 260.0;
const GAP: f64 = 30.0;

/// The chart of `rows` titled `title`, as an SVG document.
pub fn svg(title: &str, rows: &[Bar]) -> String {
    type Metric = fn(&Bar) -> f64;
    let panels: [(&str, Metric, &str); 3] = [
        ("CPU µs per request", |r| r.cpu_us_per_req, "#4878a8"),
        ("p50 µs", |r| r.p50_us, "#58a058"),
        ("p99 µs", |r| r.p99_us, "#c87838"),
    ];
    let width = LABEL_W + 3.0 * (PANEL_W + GAP);
    let height = 60.0 + ROW_H * rows.len() as f64 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (k, (name, metric, color)) in panels.iter().enumerate() {
        let x0 = LABEL_W + k as f64 * (PANEL_W + GAP);
        let max = rows
            .iter()
            .map(metric)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="45" font-weight="bold">{}</text>"#,
            escape(name)
        );
        for (i, row) in rows.iter().enumerate() {
            let v = metric(row);
            let y = 55.0 + ROW_H * i as f64;
            let w = if max > 0.0 && v.is_finite() {
                (v / max * (PANEL_W - 60.0)).max(1.0)
            } else {
                0.0
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x0}" y="{y}" width="{w:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}">{v:.1}</text>"#,
                ROW_H - 6.0,
                x0 + w + 4.0,
                y + ROW_H - 10.0
            );
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let y = 55.0 + ROW_H * i as f64 + ROW_H - 10.0;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{y:.1}">{} c{}</text>"#,
            escape(&row.variant),
            row.concurrency
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
