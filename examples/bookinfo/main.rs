//! Bookinfo in Rust: Istio's sample application — productpage, details, reviews v1/v2/v3 and
//! ratings — as ordinary hyper and tonic services that each adopted the mesh with one wrap,
//! driven by Istio's own Bookinfo documents.
//!
//! ```text
//! cargo run --release --example bookinfo                       # the scripted scenario
//! cargo run --release --example bookinfo -- --phase-secs 3 --json out.json
//! cargo run --release --example bookinfo -- --serve --config DIR   # follow documents copied into DIR
//! cargo run --release --example bookinfo -- reviews --version v2 --listen ADDR \
//!     --registry file:endpoints.yaml --config DIR --certs DIR      # one service alone (see `standalone`)
//! ```
//!
//! Every service gets its own SPIFFE identity (`spiffe://cluster.local/ns/default/sa/bookinfo-<app>`)
//! from a development CA minted at start; discovery is an endpoints file in a temp dir; mTLS is
//! STRICT and authorization follows `security/authorization-policies.yaml` (only productpage
//! may call details and reviews, only reviews may call ratings). The phases (each
//! `--phase-secs` long) write their routing as Istio documents into the watched config
//! directory: `baseline`, `canary`, `ab`, `fault`, `outage`, `deny`. The run ends with a table
//! per phase and exits non-zero if a phase broke its promise.

mod cluster;
mod registry;
mod scenario;
mod services;
mod standalone;

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;

struct Args {
    phase_secs: f64,
    json: Option<PathBuf>,
    serve: bool,
    config: Option<PathBuf>,
    only: Option<Vec<String>>,
    etcd: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        phase_secs: 5.0,
        json: None,
        serve: false,
        config: None,
        only: None,
        etcd: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--phase-secs" => {
                a.phase_secs = value("--phase-secs")?
                    .parse()
                    .map_err(|e| format!("--phase-secs: {e}"))?
            }
            "--json" => a.json = Some(value("--json")?.into()),
            "--serve" => a.serve = true,
            "--registry" => {
                let v = value("--registry")?;
                match v.strip_prefix("file:") {
                    // The demo makes its own endpoints file; a path is for standalone services.
                    Some(_) => {}
                    None if v.starts_with("etcd://") || v.starts_with("etcds://") => {
                        a.etcd = Some(v)
                    }
                    None => return Err(format!("--registry {v}: expected etcd://HOST:PORT")),
                }
            }
            "--phases" => a.only = Some(value("--phases")?.split(',').map(str::to_owned).collect()),
            "--config" => a.config = Some(value("--config")?.into()),
            "-h" | "--help" => {
                return Err("usage: bookinfo [--registry etcd://HOST:PORT] [--phase-secs N] [--phases a,b,…] [--json FILE] | --serve [--config DIR]".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `RUST_LOG=mesh_hyper=debug` shows every routing decision, retry and ejection.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_thread_names(true)
        .try_init();
    // One service, or the load driver, as a process of its own (see `standalone`).
    let mut argv = std::env::args().skip(1).peekable();
    if let Some(first) = argv.peek().filter(|a| !a.starts_with('-')).cloned() {
        argv.next();
        let result = match standalone::Options::parse(&mut argv) {
            Err(e) => Err(e.into()),
            Ok(o) if first == "load" => standalone::load(o).await.map(|ok| if ok { 0 } else { 1 }),
            Ok(o) => standalone::service(&first, o).await.map(|()| 0),
        };
        match result {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("bookinfo {first}: {e}");
                std::process::exit(2);
            }
        }
    }
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("bookinfo: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> Result<bool, Box<dyn std::error::Error>> {
    let (mut cluster, listeners) =
        cluster::Cluster::prepare(&scenario::base_documents(), args.etcd.as_deref()).await?;
    if let Some(dir) = &args.config {
        // The user's documents: copied in, then followed (see `serve`).
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                cluster
                    .write(
                        &p.file_name().unwrap().to_string_lossy(),
                        &std::fs::read_to_string(&p)?,
                    )
                    .await?;
            }
        }
    }
    cluster.start(listeners).await?;
    let gateway = cluster
        .workload("istio-ingressgateway", None, "gateway")
        .await?
        .http();
    println!(
        "Bookinfo: {} instances on loopback, mTLS STRICT, {}",
        cluster.instances.len(),
        cluster.registry.describe()
    );
    for i in &cluster.instances {
        println!(
            "  {:<16} {:<22} version {:<3} {}",
            i.name,
            i.addr,
            i.version.unwrap_or("-"),
            cluster::principal(i.app)
        );
    }
    if args.serve {
        return serve(&cluster, &gateway, args.config).await;
    }
    let mut all = Vec::new();
    let mut ok = true;
    for phase in scenario::phases() {
        if args
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|p| p == phase.name))
        {
            continue;
        }
        println!("\n== {} — {}", phase.name, phase.what);
        let s = scenario::run_phase(&mut cluster, &gateway, &phase, args.phase_secs, true).await?;
        if let Some(e) = &s.first_error {
            println!("  first failure: {e}");
        }
        for (what, passed) in &s.checks {
            println!("  {} {what}", if *passed { "✓" } else { "✗" });
            ok &= passed;
        }
        all.push(s);
    }
    println!("\n{}", scenario::table(&all));
    let overhead = overhead().await?;
    println!("{overhead}");
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "phases": all, "overhead": overhead, "ok": ok });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        println!("wrote {}", path.display());
    }
    println!(
        "{}",
        if ok {
            "every phase kept its promise"
        } else {
            "SOME PHASES FAILED (✗ above)"
        }
    );
    Ok(ok)
}

/// `--serve`: keeps Bookinfo running, follows the documents in DIR (copied into the watched
/// config directory as they change) and prints the split of a light, steady load each second.
async fn serve(
    cluster: &cluster::Cluster,
    gateway: &mesh::hyper::MeshClient<Empty<Bytes>>,
    dir: Option<PathBuf>,
) -> Result<bool, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(GATEWAY).await?;
    tokio::spawn(ingress(listener, gateway.clone()));
    println!(
        "\nopen http://{GATEWAY}/productpage (the ingress gateway: plain HTTP in, mTLS to productpage; \
         ?u=jason or a `user=jason` cookie makes you jason); Ctrl-C stops"
    );
    if let Some(d) = &dir {
        println!(
            "following {}: copy Istio documents there (e.g. samples/bookinfo/networking/virtual-service-reviews-jason-v2-v3.yaml)",
            d.display()
        );
    }
    let mut seen = std::collections::BTreeMap::<PathBuf, std::time::SystemTime>::new();
    loop {
        if let Some(d) = &dir {
            sync_documents(cluster, d, &mut seen).await?;
        }
        let stats = std::sync::Arc::new(std::sync::Mutex::new(scenario::Stats::default()));
        scenario::drive_for(gateway, 1.0, &stats).await;
        let s = stats.lock().unwrap();
        println!(
            "{:>6} requests/s  reviews by version {:?}  jason {:?}",
            s.requests, s.by_version, s.jason_by_version
        );
    }
}

/// Where `--serve` listens for browsers.
const GATEWAY: &str = "127.0.0.1:9080";

/// The ingress gateway of `--serve`: plain HTTP from a browser, forwarded to productpage
/// through the gateway workload's mesh client (mTLS, identity bookinfo-gateway); `?u=NAME`
/// or a `user=NAME` cookie makes the request NAME's.
async fn ingress(listener: tokio::net::TcpListener, client: mesh::hyper::MeshClient<Empty<Bytes>>) {
    use http_body_util::BodyExt;
    while let Ok((stream, _)) = listener.accept().await {
        let client = client.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    async move {
                        let mut fwd = hyper::Request::get(format!(
                            "http://productpage:9080{}",
                            req.uri().path()
                        ))
                        .body(Empty::new())
                        .expect("a request");
                        let user = req
                            .uri()
                            .query()
                            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("u=")));
                        if let Some(u) = user.and_then(|u| u.parse().ok()) {
                            fwd.headers_mut().insert("end-user", u);
                        }
                        if let Some(c) = req.headers().get(http::header::COOKIE) {
                            fwd.headers_mut().insert(http::header::COOKIE, c.clone());
                        }
                        let rsp = match client.request(fwd).await {
                            Ok(rsp) => {
                                let (parts, body) = rsp.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                hyper::Response::from_parts(parts, http_body_util::Full::new(bytes))
                            }
                            Err(e) => hyper::Response::builder()
                                .status(502)
                                .body(http_body_util::Full::new(Bytes::from(e.to_string())))
                                .expect("a response"),
                        };
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Copies new or changed documents of `dir` into the watched config directory.
async fn sync_documents(
    cluster: &cluster::Cluster,
    dir: &std::path::Path,
    seen: &mut std::collections::BTreeMap<PathBuf, std::time::SystemTime>,
) -> Result<(), Box<dyn std::error::Error>> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if !p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let modified = std::fs::metadata(&p)?.modified()?;
        if seen.get(&p) != Some(&modified) {
            let applied = cluster
                .write(
                    &p.file_name().unwrap().to_string_lossy(),
                    &std::fs::read_to_string(&p)?,
                )
                .await;
            match applied {
                Ok(()) => println!("applied {}", p.display()),
                // Under etcd, `mesh apply`'s validation refuses an invalid document here.
                Err(e) => println!("refused {}: {e}", p.display()),
            }
            seen.insert(p, modified);
        }
    }
    Ok(())
}

/// The mesh's cost per call in this run: 2,000 sequential GETs to one plaintext backend, by
/// a raw hyper-util client and by a mesh client (the default stack), p50 of each.
async fn overhead() -> Result<String, Box<dyn std::error::Error>> {
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use mesh::core::{Endpoint, Mesh, discover::StaticSource};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let raw: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mesh = mesh::hyper::MeshClient::<Empty<Bytes>>::new(
        Mesh::builder()
            .service(
                "echo.test:80",
                StaticSource::new(vec![Endpoint::new(addr)])?,
            )
            .without_dns_fallback()
            .build()?,
    );
    let p50 = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..2_000 {
        let t = std::time::Instant::now();
        raw.request(hyper::Request::get(format!("http://{addr}/")).body(Empty::new())?)
            .await?;
        a.push(t.elapsed());
        let t = std::time::Instant::now();
        mesh.request(hyper::Request::get("http://echo.test/").body(Empty::new())?)
            .await?;
        b.push(t.elapsed());
    }
    let (ra, mb) = (p50(a), p50(b));
    Ok(format!(
        "mesh overhead per call in this run: {:+.1} µs at p50 (raw hyper-util {:.1} µs, mesh {:.1} µs; 2,000 sequential calls, plaintext, loopback)",
        (mb.as_secs_f64() - ra.as_secs_f64()) * 1e6,
        ra.as_secs_f64() * 1e6,
        mb.as_secs_f64() * 1e6
    ))
}
