//! Closed-loop load: `concurrency` tasks each send a request, wait for the whole response, and
//! send the next, until the time is up (or a per-task request cap, so a loop that fails fast
//! stays bounded too).

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

/// At most this many requests per task and run (≈ 2.5 M/s for 60 s at c1: never reached by a
/// healthy run; it bounds loops whose requests fail instantly).
const MAX_REQUESTS_PER_TASK: u64 = 150_000_000;

/// Something the load generator sends requests to. `Ok(attempts)` or `Err(reason)` per request;
/// the response body has been read in full.
pub trait Target: Send + Sync + 'static {
    fn send(&self) -> impl Future<Output = Result<(), String>> + Send + 'static;
}

/// One measured run.
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in nanoseconds, successful and failed requests alike.
    pub hist: Histogram<u64>,
    /// CPU time of this process (all threads) during the run, plus external processes'.
    pub cpu: Duration,
    pub first_error: Option<String>,
    /// Share of the machine's CPU time the hypervisor took (steal) during the run, in percent.
    pub steal_pct: f64,
    /// Scenario-specific figures.
    pub extra: std::collections::BTreeMap<&'static str, f64>,
}

impl Sample {
    /// A sample of nothing (a measurement that did not run).
    pub fn empty() -> Self {
        Self {
            requests: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            hist: Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds"),
            cpu: Duration::ZERO,
            first_error: None,
            steal_pct: f64::NAN,
            extra: Default::default(),
        }
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn cpu_us_per_req(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// CPU time (user + system) of this process so far.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (steal, all) jiffies of every CPU so far, from the first line of /proc/stat, for
/// [`steal_pct`].
pub fn steal_now() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal (guest time is inside user already)
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (v.len() == 8).then(|| (v[7], v.iter().sum()))
}

/// Hypervisor steal between two readings, in percent of all CPU time (NaN where /proc/stat is
/// not there).
pub fn steal_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => (s1 - s0) as f64 * 100.0 / (t1 - t0) as f64,
        _ => f64::NAN,
    }
}

/// Runs closed-loop load against `target`; `external_cpu` reports the CPU used by processes the
/// request path crosses (e.g. a sidecar), sampled before and after.
pub async fn run<T: Target>(
    target: Arc<T>,
    concurrency: usize,
    duration: Duration,
    external_cpu: &dyn Fn() -> Duration,
) -> Sample {
    let ext0 = external_cpu();
    let steal0 = steal_now();
    let cpu0 = process_cpu();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1_000, 120_000_000_000, 3)
                    .expect("valid histogram bounds");
                let (mut n, mut errors, mut first_error) = (0u64, 0u64, None);
                while n < MAX_REQUESTS_PER_TASK {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    if let Err(e) = target.send().await {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                    hist.saturating_record(t0.elapsed().as_nanos() as u64);
                    n += 1;
                }
                (hist, n, errors, first_error)
            })
        })
        .collect();
    let mut sample = Sample {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        hist: Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds"),
        cpu: Duration::ZERO,
        first_error: None,
        steal_pct: f64::NAN,
        extra: Default::default(),
    };
    for t in tasks {
        let (hist, n, errors, first_error) = t.await.expect("load task panicked");
        sample.hist.add(&hist).expect("same histogram bounds");
        sample.requests += n;
        sample.errors += errors;
        if sample.first_error.is_none() {
            sample.first_error = first_error;
        }
    }
    sample.elapsed = start.elapsed();
    sample.cpu = (process_cpu() - cpu0) + external_cpu().saturating_sub(ext0);
    sample.steal_pct = steal_pct(steal0, steal_now());
    sample
}
