//! mesh's load benchmark: every variant of a scenario in one process, against the same backend,
//! in interleaved rounds; rows are medians over rounds.
//!
//! ```text
//! cargo run --release --example bench -- <scenario> [--duration SECS] [--rounds N]
//!     [--warmup SECS] [--json PATH (and PATH.svg beside it)] [--only VARIANT,...]
//!     [--concurrency N,...]
//! ```
//!
//! Scenarios:
//! - `overhead`: `raw` (hyper-util client → backend), `mesh` (mesh client, full default stack
//!   with telemetry: metrics and W3C trace context → backend), `mesh-no-telemetry` (the same
//!   without either), `haproxy` (hyper-util client → one HAProxy hop → backend), at concurrency
//!   1 and 32; on request (`--only`), `mesh-metrics-only` and `mesh-trace-only` split
//!   telemetry's cost into its two halves.
//! - `lb`: four backends, one 10x slower; `p2c-ewma`, `round-robin`, `oracle` (the three fast
//!   ones only), concurrency 16.
//! - `faults`: the default stack, concurrency 16, with extra columns `success_pct`,
//!   `attempts_per_request` (and `ejected_after_ms`): `dead-backend` (1 of 3 refuses
//!   connections), `flaky` (1 of 3 answers 503 half the time), `all-down`, `slow-one` (1 of 3
//!   answers 10 % of requests after 100 ms) and `slow-one-hedged` (both round robin, so that the
//!   slow replica keeps its share and the rows isolate hedging), and `slow-one-p2c` (the default
//!   balancer, which avoids the slow replica by itself).
//!
//! - `mtls`: `raw` (plain HTTP), `raw-tls` (hyper-util over rustls mTLS to a rustls server, no
//!   mesh), `mesh-mtls` (the mesh client's full stack with mTLS to a mesh server: STRICT
//!   acceptor + authorization), `haproxy-2hop-mtls` (client sidecar → mTLS → server sidecar, the
//!   Istio shape), at concurrency 1 and 32; extra column `handshakes_per_1k`.
//! - `grpc`: unary calls with small messages to three tonic servers: `raw-tonic` (tonic's
//!   `Channel` to one of them), `tonic-balance` (tonic's `Channel::balance_list` over the
//!   three), `mesh` (the mesh channel over the same three, full default stack), at
//!   concurrency 1 and 32.
//!
//! - `routing`: `raw`, `mesh` (no documents) and `mesh-routes` (a VirtualService of five rules,
//!   the last matching, splitting 90/10 over two subsets), at concurrency 1 and 32; then the
//!   time to reload 1,000 VirtualServices and 1,000 DestinationRules under load, and the
//!   requests that failed meanwhile.
//!
//! - `scale`: one service with 10, 1,000 and 10,000 endpoints (`endpoints-N`, c32); then, at
//!   10,000, endpoints added / re-weighted / removed under load (time until the balancer holds
//!   the change), memory per idle endpoint, and 1,000 services in one client (memory, first
//!   request latency). See `scale.rs`.
//!
//! The backend, the load generator and the client share one tokio runtime with one worker per
//! core; their CPU is in every variant alike (it dilutes ratios: say so next to them). HAProxy is
//! a separate process whose CPU is added to `cpu_us_per_req`.

mod backend;
mod chart;
mod grpc;
mod load;
mod mtls;
mod report;
mod routing;
mod scale;
mod scenarios;
mod sidecar;
mod targets;
mod tls;

use std::{future::Future, path::PathBuf, pin::Pin, process::ExitCode, time::Duration};

use crate::load::Sample;

/// Runs one variant once: (concurrency, warm-up, duration) → the measured sample.
pub type RunFn = Box<dyn Fn(usize, Duration, Duration) -> Pin<Box<dyn Future<Output = Sample>>>>;

pub struct Variant {
    pub name: String,
    pub run: RunFn,
}

pub struct Opts {
    scenario: String,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    json: Option<PathBuf>,
    /// Only these variants (for profiling one of them); all when empty.
    only: Vec<String>,
    /// Only these concurrencies; the scenario's own when empty.
    concurrency: Vec<usize>,
}

const USAGE: &str = "usage: bench <overhead|lb|faults|mtls|grpc|routing|scale> [--duration SECS] [--rounds N] [--warmup SECS] [--json PATH] [--only VARIANT,...] [--concurrency N,...]";

fn parse_args() -> Result<Opts, String> {
    let mut args = std::env::args().skip(1);
    let mut scenario = None;
    let (mut duration, mut warmup, mut rounds) = (5.0f64, 1.0f64, 3usize);
    let (mut json, mut only, mut concurrency) = (None, Vec::new(), Vec::new());
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--duration" => {
                duration = value("--duration")?.parse().map_err(|_| "bad --duration")?
            }
            "--warmup" => warmup = value("--warmup")?.parse().map_err(|_| "bad --warmup")?,
            "--rounds" => rounds = value("--rounds")?.parse().map_err(|_| "bad --rounds")?,
            "--json" => json = Some(PathBuf::from(value("--json")?)),
            "--only" => only = value("--only")?.split(',').map(str::to_owned).collect(),
            "--concurrency" => {
                concurrency = value("--concurrency")?
                    .split(',')
                    .map(|c| c.parse().map_err(|_| "bad --concurrency"))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown flag {s}\n{USAGE}")),
            s => scenario = Some(s.to_owned()),
        }
    }
    let valid = duration > 0.0
        && duration <= 600.0
        && (0.0..=60.0).contains(&warmup)
        && (1..=50).contains(&rounds);
    if !valid {
        return Err(
            "--duration must be in (0, 600], --warmup in [0, 60], --rounds in [1, 50]".into(),
        );
    }
    Ok(Opts {
        scenario: scenario.ok_or(USAGE)?,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        rounds,
        json,
        only,
        concurrency,
    })
}

/// Runs every variant at every concurrency for `rounds` rounds, rotating the variant order each
/// round so that no variant always runs first (or right after the same neighbour).
async fn rounds(opts: &Opts, variants: &[Variant], concurrencies: &[usize]) -> Vec<report::Row> {
    let concurrencies = if opts.concurrency.is_empty() {
        concurrencies
    } else {
        &opts.concurrency[..]
    };
    let variants: Vec<&Variant> = variants
        .iter()
        // Diagnostic variants (named `*-only`) run when `--only` names them, not by default.
        .filter(|v| {
            if opts.only.is_empty() {
                !v.name.ends_with("-only")
            } else {
                opts.only.contains(&v.name)
            }
        })
        .collect();
    let mut runs = Vec::new();
    for round in 0..opts.rounds {
        for &c in concurrencies {
            let n = variants.len();
            for k in 0..n {
                let v = &variants[(round + k) % n];
                let sample = (v.run)(c, opts.warmup, opts.duration).await;
                eprintln!(
                    "round {}/{} {:>17} c{:<3} {:>9.0} rps  p50 {:>7.1} us  p99 {:>8.1} us  cpu {:>6.1} us/req  steal {:>4.1} %  errors {}{}",
                    round + 1,
                    opts.rounds,
                    v.name,
                    c,
                    sample.rps(),
                    sample.quantile_us(0.5),
                    sample.quantile_us(0.99),
                    sample.cpu_us_per_req(),
                    sample.steal_pct,
                    sample.errors,
                    sample
                        .first_error
                        .as_deref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default(),
                );
                runs.push((v.name.clone(), c, report::Run::from_sample(round, &sample)));
            }
        }
    }
    let order: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
    report::rows(&runs, &order, concurrencies)
}

async fn main_async(opts: Opts) -> Result<bool, String> {
    // Scenario figures beside the rows, for `--json`.
    let mut extra = None;
    let (rows, checks, note) = match opts.scenario.as_str() {
        "overhead" => {
            let s = scenarios::Overhead::new(&opts).await?;
            let rows = rounds(&opts, &s.variants, &[1, 32]).await;
            let checks = scenarios::Overhead::checks(&rows);
            (
                rows,
                checks,
                "backend, client and load generator share one process and runtime; the HAProxy and Envoy processes' CPU is added to their rows",
            )
        }
        "faults" => {
            let s = scenarios::Faults::new().await;
            let rows = rounds(&opts, &s.variants, &[16]).await;
            let checks = scenarios::Faults::checks(&rows);
            (
                rows,
                checks,
                "the default stack; 1 ms backends; one refuses connections, returns 503 half the time, or answers 10 % of requests after 100 ms; all-down refuses everywhere; slow-one(-hedged) balance round robin; a new client per run",
            )
        }
        "mtls" => {
            let s = mtls::Mtls::new(&opts).await?;
            let rows = rounds(&opts, &s.variants, &[1, 32]).await;
            let checks = mtls::Mtls::checks(&rows);
            (
                rows,
                checks,
                "TLS 1.3, ECDSA P-256; raw-tls and mesh-mtls servers in process; the HAProxy and Envoy sidecars' CPU is added to their rows",
            )
        }
        "grpc" => {
            let s = grpc::Grpc::new().await?;
            let rows = rounds(&opts, &s.variants, &[1, 32]).await;
            let checks = grpc::Grpc::checks(&rows);
            (
                rows,
                checks,
                "three tonic servers, client and load generator share one process and runtime; raw-tonic and envoy-h2 send to one server, the others balance over three; Envoy's CPU is added to its row",
            )
        }
        "routing" => {
            let s = routing::Routing::new().await;
            let rows = rounds(&opts, &s.variants, &[1, 32]).await;
            let (one, all, sample, initial_ms) =
                s.reloads(opts.duration.max(Duration::from_secs(3))).await;
            eprintln!(
                "reloads (ms), one file changed: {one:.1?}; every document changed: {all:.1?}; initial load of {} documents: {initial_ms:.1} ms; during them {} requests, {} errors",
                2 * routing::RELOAD_HOSTS + 2,
                sample.requests,
                sample.errors
            );
            let checks = routing::Routing::checks(&rows, &one, &all, &sample);
            (
                rows,
                checks,
                "two backends, client and load generator share one process and runtime; raw sends to one backend",
            )
        }
        "scale" => {
            let mut s = scale::Scale::new().await?;
            let rows = rounds(&opts, &s.variants, &[32]).await;
            s.measure(opts.duration).await?;
            eprintln!("{}", s.summary());
            let checks = s.checks(&rows);
            extra = Some(serde_json::to_value(&s.extra).map_err(|e| e.to_string())?);
            (
                rows,
                checks,
                "one backend process on every loopback address; client and load generator share one process, whose CPU alone is counted; every endpoint holds its pooled connection",
            )
        }
        "lb" => {
            let s = scenarios::Lb::new().await;
            let rows = rounds(&opts, &s.variants, &[16]).await;
            let checks = scenarios::Lb::checks(&rows);
            (
                rows,
                checks,
                "3 backends answer after 2 ms, one after 20 ms; each run starts a new client",
            )
        }
        other => return Err(format!("unknown scenario {other:?}\n{USAGE}")),
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "\nscenario {} — {} round(s) × {:.0} s per variant, {} cores; rows are medians over rounds ({note})\n",
        opts.scenario,
        opts.rounds,
        opts.duration.as_secs_f64(),
        cores
    );
    print!("{}", report::table(&rows));
    if !checks.is_empty() {
        println!("\nfigures:\n{}", report::checks_text(&checks));
    }
    if let Some(path) = &opts.json {
        let doc = report::Report {
            scenario: &opts.scenario,
            rounds: opts.rounds,
            duration_s: opts.duration.as_secs_f64(),
            cores,
            note,
            rows: &rows,
            checks: &checks,
            extra,
        };
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
        // The chart beside it: CPU per request, p50 and p99 per row.
        let svg_path = path.with_extension("svg");
        let title = format!(
            "mesh bench: {} ({} rounds, medians)",
            opts.scenario, opts.rounds
        );
        let bars: Vec<chart::Bar> = rows.iter().map(chart::Bar::from).collect();
        std::fs::write(&svg_path, chart::svg(&title, &bars))
            .map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
        println!("wrote {}", svg_path.display());
    }
    Ok(checks.iter().all(|c| c.pass))
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(scale::BACKEND_ARG) {
        return scale::backend_main();
    }
    // `bench chart FILE.json`: the chart of a report written earlier, beside it.
    if std::env::args().nth(1).as_deref() == Some("chart") {
        let Some(path) = std::env::args().nth(2) else {
            eprintln!("usage: bench chart REPORT.json");
            return ExitCode::from(2);
        };
        return match chart::from_report(std::path::Path::new(&path)) {
            Ok(out) => {
                println!("wrote {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("bench chart: {e}");
                ExitCode::from(2)
            }
        };
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(main_async(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some figures were missed (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
    }
}
