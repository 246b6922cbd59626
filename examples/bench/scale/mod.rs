//! `scale`: one service with many endpoints, and many services in one client.
//!
//! - Variants `endpoints-10`, `endpoints-1000`, `endpoints-10000`: one service with that many
//!   endpoints — distinct loopback addresses `127.16.x.y`, all answered by one backend that
//!   listens on every loopback address (bound to the `lo` device: nothing off the machine
//!   reaches it; a child process, so that both ends of 10,000 connections fit the file
//!   limits) — through the default stack (P2C over Peak-EWMA), at c32. Each run makes a new
//!   client and opens a pooled connection to every endpoint before it measures, as a
//!   long-running service's would be. `raw-10` and `raw-10000` are hyper-util alone over the
//!   same addresses (a random one per request): what so many connections cost without mesh.
//!   The rows count the client process's CPU (mesh and the load generator), not the backend's.
//! - Changes under load at 10,000 endpoints: one endpoint added, re-weighted, removed, several
//!   times; each is timed from the discovery update until the balancer's table holds it
//!   (polled through [`MeshClient::endpoint`], a lookup whose cost bounds the resolution and
//!   is printed), and the requests that failed meanwhile are counted.
//! - Memory per idle endpoint: the growth of the resident set when 10,000 endpoints join a
//!   service the client has already sent to (discovery's copy and the balancer's slot; no
//!   connection is opened to them), after `malloc_trim`.
//! - 1,000 services in one client: resident set after building the mesh, after one request to
//!   each service (each opens its connection; the server side is in the backend process),
//!   and the latency of each service's first request beside its second.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use mesh::core::{
    Endpoint, Mesh, ServiceConfig, ServiceName, balance::EndpointStats, discover::StaticSource,
};
use mesh::hyper::{ClientSettings, MeshClient};
use serde::Serialize;

mod backend;

pub use backend::{BACKEND_ARG, backend_main};
use backend::{BackendProcess, raise_fd_limit};

use crate::{
    Variant,
    load::{self, Target},
    report::{Check, Paired, Row, find, median},
    scenarios::no_external,
    targets,
};

/// Endpoints of the one service, per variant.
pub const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Services of the many-services measurement.
const SERVICES: usize = 1_000;
/// Each kind of change is measured this many times.
const CHANGES: usize = 5;
const HOST: &str = "scale.bench:8080";
const URI: &str = "http://scale.bench:8080/";

type Client = MeshClient<Empty<Bytes>>;

/// What the scenario measured besides its rows (printed, and written into `--json`).
#[derive(Debug, Default, Serialize)]
pub struct Extra {
    /// RSS growth per idle endpoint, in bytes.
    pub bytes_per_idle_endpoint: f64,
    /// Milliseconds from the discovery update until the balancer held it, per change.
    pub add_ms: Vec<f64>,
    pub reweight_ms: Vec<f64>,
    pub remove_ms: Vec<f64>,
    /// What one `MeshClient::endpoint` lookup takes at 10,000 endpoints (the polling resolution).
    pub poll_ms: f64,
    /// Requests and failures of the load that ran during the changes.
    pub requests_during_changes: u64,
    pub errors_during_changes: u64,
    /// 1,000 services: RSS growth (MiB) after building the mesh, and after one request to each.
    pub services_built_mib: f64,
    pub services_sent_mib: f64,
    /// First and second request latency over the 1,000 services, in microseconds.
    pub first_request_p50_us: f64,
    pub first_request_p99_us: f64,
    pub second_request_p50_us: f64,
}

/// One service of `n` endpoints and the client that sends to it. Made afresh for every run
/// (and dropped after it, with its connections): the clients of all sizes would not fit the
/// process's open-file limit at once.
struct Sized {
    n: usize,
    source: StaticSource,
    client: Client,
    target: Arc<targets::Mesh>,
}

impl Sized {
    fn new(n: usize, port: u16) -> Result<Self, String> {
        let source = StaticSource::new(endpoints(16, n, port)).map_err(|e| e.to_string())?;
        let client = client_for(HOST, source.clone())?;
        let target = Arc::new(targets::Mesh::new(client.clone(), URI));
        Ok(Self {
            n,
            source,
            client,
            target,
        })
    }
}

pub struct Scale {
    backend: BackendProcess,
    pub variants: Vec<Variant>,
    pub extra: Extra,
}

/// The address of endpoint `i` in block `block` (127.`block`.x.y), on the backend's port.
fn address(block: u8, i: usize, port: u16) -> SocketAddr {
    let j = (i + 1) as u32;
    let ip = Ipv4Addr::new(127, block, (j >> 8) as u8, j as u8);
    debug_assert!(j < 1 << 16, "one block holds 65,535 endpoints");
    SocketAddr::from((ip, port))
}

fn endpoints(block: u8, n: usize, port: u16) -> Vec<Endpoint> {
    (0..n)
        .map(|i| Endpoint::new(address(block, i, port)))
        .collect()
}

/// Resident set size of this process, in bytes.
pub fn rss() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// Returns freed heap to the system, so that the next RSS growth is memory newly in use.
fn trim() {
    // SAFETY: malloc_trim has no preconditions (glibc).
    unsafe {
        libc::malloc_trim(0);
    }
}

fn client_for(service: &str, source: StaticSource) -> Result<Client, String> {
    let mesh = Mesh::builder()
        .service_with(service, source, ServiceConfig::default())
        .without_dns_fallback()
        .build()
        .map_err(|e| format!("scale mesh: {e}"))?;
    Ok(MeshClient::with_settings(mesh, ClientSettings::default()))
}

fn service() -> ServiceName {
    ServiceName::parse(HOST).expect("a valid service name")
}

impl Scale {
    pub async fn new() -> Result<Self, String> {
        raise_fd_limit(16_384)?;
        let backend = BackendProcess::start()?;
        let port = backend.port;
        let extra = Extra {
            bytes_per_idle_endpoint: idle_endpoint_bytes(port).await?,
            ..Extra::default()
        };
        let mut variants: Vec<Variant> = [SIZES[0], SIZES[SIZES.len() - 1]]
            .into_iter()
            .map(|n| Variant {
                name: format!("raw-{n}"),
                run: Box::new(move |c, warmup, duration| {
                    let raw = Arc::new(targets::RawSpread::new(
                        (0..n).map(|i| address(16, i, port)),
                    ));
                    Box::pin(async move {
                        let deadline = Instant::now() + Duration::from_secs(60);
                        while !raw.swept() && Instant::now() < deadline {
                            let step = Duration::from_millis(200);
                            load::run(raw.clone(), c, step, &no_external).await;
                        }
                        load::run(raw.clone(), c, warmup, &no_external).await;
                        load::run(raw, c, duration, &no_external).await
                    })
                }),
            })
            .collect();
        variants.extend(SIZES.into_iter().map(|n| Variant {
            name: format!("endpoints-{n}"),
            run: Box::new(move |c, warmup, duration| {
                Box::pin(async move {
                    let s = match Sized::new(n, port) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("scale: {e}");
                            return load::Sample::empty();
                        }
                    };
                    open_all(&s, c).await;
                    load::run(s.target.clone(), c, warmup, &no_external).await;
                    load::run(s.target.clone(), c, duration, &no_external).await
                })
            }),
        }));
        Ok(Self {
            backend,
            variants,
            extra,
        })
    }

    /// After the rounds: endpoint changes under load at the largest size, then 1,000 services.
    pub async fn measure(&mut self, duration: Duration) -> Result<(), String> {
        let port = self.backend.port;
        let big = Sized::new(SIZES[SIZES.len() - 1], port)?;
        open_all(&big, 32).await;
        let svc = service();
        let eps = big
            .client
            .endpoints(&svc)
            .ok_or("the client has not sent to the service")?;
        let t = Instant::now();
        let _ = big.client.endpoint(&svc, address(16, big.n / 2, port));
        self.extra.poll_ms = t.elapsed().as_secs_f64() * 1e3;
        if eps.len() != big.n {
            return Err(format!(
                "the balancer holds {} of {} endpoints",
                eps.len(),
                big.n
            ));
        }
        let run_for = duration.max(Duration::from_secs(3));
        let load = load::run(big.target.clone(), 32, run_for, &no_external);
        let changes = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let base = endpoints(16, big.n, port);
            let added = address(17, 0, port);
            let (mut add, mut reweight, mut remove) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..CHANGES {
                let mut with = base.clone();
                with.push(Endpoint::new(added));
                add.push(change(&big, with, added, |e| e.is_some()).await?);
                tokio::time::sleep(Duration::from_millis(50)).await;

                let mut heavier = base.clone();
                heavier.push(Endpoint::new(added).weight(5));
                let heavy = |e: Option<EndpointStats>| e.is_some_and(|e| e.weight == 5);
                reweight.push(change(&big, heavier, added, heavy).await?);
                tokio::time::sleep(Duration::from_millis(50)).await;

                remove.push(change(&big, base.clone(), added, |e| e.is_none()).await?);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, String>((add, reweight, remove))
        };
        let (sample, changed) = tokio::join!(load, changes);
        (
            self.extra.add_ms,
            self.extra.reweight_ms,
            self.extra.remove_ms,
        ) = changed?;
        self.extra.requests_during_changes = sample.requests;
        self.extra.errors_during_changes = sample.errors;
        self.many_services(port).await
    }

    /// 1,000 services with one endpoint each in one client.
    async fn many_services(&mut self, port: u16) -> Result<(), String> {
        trim();
        let before = rss();
        let mut builder = Mesh::builder().without_dns_fallback();
        for i in 0..SERVICES {
            let source = StaticSource::new(vec![Endpoint::new(address(18, i, port))])
                .map_err(|e| e.to_string())?;
            builder = builder.service_with(
                format!("svc-{i}.scale:8080"),
                source,
                ServiceConfig::default(),
            );
        }
        let mesh = builder
            .build()
            .map_err(|e| format!("1,000-service mesh: {e}"))?;
        let client: Client = MeshClient::with_settings(mesh, ClientSettings::default());
        let built = rss();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for i in 0..SERVICES {
            let target = targets::Mesh::new(client.clone(), &format!("http://svc-{i}.scale:8080/"));
            for out in [&mut first, &mut second] {
                let t = Instant::now();
                target
                    .send()
                    .await
                    .map_err(|e| format!("svc-{i}.scale: {e}"))?;
                out.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        let sent = rss();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        self.extra.services_built_mib = mib(built.saturating_sub(before));
        self.extra.services_sent_mib = mib(sent.saturating_sub(before));
        self.extra.first_request_p50_us = quantile(&first, 0.5);
        self.extra.first_request_p99_us = quantile(&first, 0.99);
        self.extra.second_request_p50_us = quantile(&second, 0.5);
        Ok(())
    }

    pub fn summary(&self) -> String {
        let e = &self.extra;
        let stat = |v: &[f64]| {
            format!(
                "median {:.2} ms, max {:.2} ms",
                median(v.to_vec()),
                v.iter().cloned().fold(f64::NAN, f64::max)
            )
        };
        format!(
            "memory per idle endpoint: {:.0} B\n\
             changes at {} endpoints under c32 load (polling resolution {:.2} ms): add {}; re-weight {}; remove {}; {} requests, {} errors meanwhile\n\
             {SERVICES} services in one client: +{:.1} MiB built, +{:.1} MiB after one request to each (with its connection); first request p50 {:.0} us p99 {:.0} us, second p50 {:.0} us",
            e.bytes_per_idle_endpoint,
            SIZES[SIZES.len() - 1],
            e.poll_ms,
            stat(&e.add_ms),
            stat(&e.reweight_ms),
            stat(&e.remove_ms),
            e.requests_during_changes,
            e.errors_during_changes,
            e.services_built_mib,
            e.services_sent_mib,
            e.first_request_p50_us,
            e.first_request_p99_us,
            e.second_request_p50_us,
        )
    }

    pub fn checks(&self, rows: &[Row]) -> Vec<Check> {
        let mut checks = Vec::new();
        let (small, large) = (SIZES[0], SIZES[SIZES.len() - 1]);
        if let (Some(a), Some(b)) = (
            find(rows, &format!("endpoints-{large}"), 32),
            find(rows, &format!("endpoints-{small}"), 32),
        ) {
            let p = Paired::new(a, b, |x, y| x.cpu_us_per_req / y.cpu_us_per_req);
            let pass = |v: f64| v <= 1.10;
            // hyper-util alone over the same addresses: what the connections cost by themselves.
            let raw = match (
                find(rows, &format!("raw-{large}"), 32),
                find(rows, &format!("raw-{small}"), 32),
            ) {
                (Some(ra), Some(rb)) => format!(
                    "; raw hyper-util {:.1} vs {:.1} us/req ({:.2}x); mesh adds {:.1} us/req at {small}, {:.1} at {large}",
                    ra.cpu_us_per_req,
                    rb.cpu_us_per_req,
                    ra.cpu_us_per_req / rb.cpu_us_per_req,
                    b.cpu_us_per_req - rb.cpu_us_per_req,
                    a.cpu_us_per_req - ra.cpu_us_per_req
                ),
                _ => String::new(),
            };
            checks.push(Check::new(
                format!("CPU per request at {large} endpoints <= 1.10x that at {small} (c32)"),
                format!(
                    "{:.1} vs {:.1} us/req; {}",
                    a.cpu_us_per_req,
                    b.cpu_us_per_req,
                    p.describe(3, pass)
                ) + &raw,
                pass(p.median()),
            ));
        }
        let e = &self.extra;
        let all: Vec<f64> = e
            .add_ms
            .iter()
            .chain(&e.reweight_ms)
            .chain(&e.remove_ms)
            .copied()
            .collect();
        let worst = all.iter().cloned().fold(0.0, f64::max);
        checks.push(Check::new(
            format!("an endpoint change is applied in <= 10 ms at {large} endpoints"),
            format!(
                "worst of {} changes {worst:.2} ms (polling resolution {:.2} ms)",
                all.len(),
                e.poll_ms
            ),
            !all.is_empty() && worst <= 10.0,
        ));
        checks.push(Check::new(
            "no request fails while endpoints change",
            format!(
                "{} errors in {} requests",
                e.errors_during_changes, e.requests_during_changes
            ),
            e.requests_during_changes > 0 && e.errors_during_changes == 0,
        ));
        checks.push(Check::new(
            "<= 4 KiB memory per idle endpoint",
            format!("{:.0} B", e.bytes_per_idle_endpoint),
            e.bytes_per_idle_endpoint > 0.0 && e.bytes_per_idle_endpoint <= 4096.0,
        ));
        checks
    }
}

/// Until every endpoint of `s` has answered (so holds a pooled connection), sends at
/// concurrency `c`; bounded at 60 s.
async fn open_all(s: &Sized, c: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let svc = service();
    loop {
        let connected = s
            .client
            .endpoints(&svc)
            .map(|eps| eps.iter().filter(|e| e.ewma_latency.is_some()).count())
            .unwrap_or(0);
        if connected >= s.n || Instant::now() > deadline {
            if connected < s.n {
                eprintln!(
                    "scale: only {connected} of {} endpoints answered within 60 s",
                    s.n
                );
            }
            return;
        }
        load::run(
            s.target.clone(),
            c,
            Duration::from_millis(500),
            &no_external,
        )
        .await;
    }
}

/// Publishes `set` and returns the milliseconds until the balancer's entry for `addr`
/// satisfies `done` (`None`: not in the set).
async fn change(
    s: &Sized,
    set: Vec<Endpoint>,
    addr: SocketAddr,
    done: impl Fn(Option<EndpointStats>) -> bool,
) -> Result<f64, String> {
    let svc = service();
    let t = Instant::now();
    s.source.update(set).map_err(|e| e.to_string())?;
    loop {
        if done(s.client.endpoint(&svc, addr)) {
            return Ok(t.elapsed().as_secs_f64() * 1e3);
        }
        if t.elapsed() > Duration::from_secs(5) {
            return Err("an endpoint change was not applied within 5 s".into());
        }
        tokio::task::yield_now().await;
    }
}

/// RSS growth per endpoint when 10,000 endpoints join a service the client has sent to.
async fn idle_endpoint_bytes(port: u16) -> Result<f64, String> {
    const N: usize = 10_000;
    let first = endpoints(19, 10, port);
    let source = StaticSource::new(first.clone()).map_err(|e| e.to_string())?;
    let client = client_for(HOST, source.clone())?;
    let target = targets::Mesh::new(client.clone(), URI);
    target
        .send()
        .await
        .map_err(|e| format!("first request: {e}"))?;
    let mut all = first;
    all.extend(endpoints(20, N, port));
    trim();
    let before = rss();
    source.update(all).map_err(|e| e.to_string())?;
    let svc = service();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.endpoints(&svc).map_or(0, |e| e.len()) < N + 10 {
        if Instant::now() > deadline {
            return Err("10,000 endpoints did not reach the balancer within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    trim();
    let grown = rss().saturating_sub(before);
    Ok(grown as f64 / N as f64)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * q).round() as usize]
}
