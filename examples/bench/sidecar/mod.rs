//! The sidecar rows: real HAProxy and Envoy processes in front of the bench's backend,
//! configured by this project (`haproxy.rs`, `envoy.rs`), started by the bench and stopped by
//! pid when the scenario ends. `scripts/sidecars` finds or installs the binaries (apt for
//! HAProxy, pip for Envoy 1.40.0); a missing proxy fails the scenario with that instruction: the
//! bench never silently drops a sidecar row.

pub mod envoy;
pub mod haproxy;

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use mesh::core::dev_ca::DevCa;

/// Running sidecar processes: the request path enters at `listen`.
pub struct Sidecar {
    children: Vec<Child>,
    pub listen: SocketAddr,
    /// Configurations and certificates, removed when the sidecar stops.
    _dir: tempfile::TempDir,
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// The proxy binary `name` (`envoy` or `haproxy`), from `scripts/sidecars` (which installs it
/// when missing); looked up once per process.
pub fn binary(name: &'static str) -> Result<PathBuf, String> {
    static ENVOY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static HAPROXY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let cell = if name == "envoy" { &ENVOY } else { &HAPROXY };
    cell.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sidecars");
        let out = Command::new(&script)
            .arg(name)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
        {
            Some(p) if out.status.success() => Ok(PathBuf::from(p.trim())),
            _ => Err(format!(
                "{name} is missing and scripts/sidecars could not install it (see above); \
                 run `scripts/sidecars {name}` as root, or set MESH_{} to the binary",
                name.to_uppercase()
            )),
        }
    })
    .clone()
}

/// Certificates from the dev CA for the two sidecars of the mTLS path: `server` and `client`,
/// SPIFFE IDs `spiffe://cluster.local/ns/default/sa/{server,client}` plus the DNS name
/// `localhost` (HAProxy verifies that one).
pub struct Pki {
    pub server: envoy::Certs,
    pub client: envoy::Certs,
    /// Certificate and key in one file, as HAProxy reads them.
    pub server_pem: PathBuf,
    pub client_pem: PathBuf,
}

pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/server";

pub fn pki(dir: &Path) -> Result<Pki, String> {
    let ca = DevCa::new("mesh bench sidecars").map_err(|e| e.to_string())?;
    ca.write(dir).map_err(|e| e.to_string())?;
    let bundle = dir.join("ca.pem");
    let issue = |sa: &str| -> Result<(envoy::Certs, PathBuf), String> {
        let id = format!("spiffe://cluster.local/ns/default/sa/{sa}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let cert = ca
            .issue(id, &["localhost", "127.0.0.1"], 1)
            .map_err(|e| e.to_string())?;
        let (c, k) = cert.write(dir, sa).map_err(|e| e.to_string())?;
        let combined = dir.join(format!("{sa}-combined.pem"));
        std::fs::write(&combined, format!("{}{}", cert.chain_pem, cert.key_pem))
            .map_err(|e| e.to_string())?;
        Ok((
            envoy::Certs {
                ca: bundle.clone(),
                cert: c,
                key: k,
            },
            combined,
        ))
    };
    let (server, server_pem) = issue("server")?;
    let (client, client_pem) = issue("client")?;
    Ok(Pki {
        server,
        client,
        server_pem,
        client_pem,
    })
}

impl Sidecar {
    /// One HAProxy hop in front of `upstream`.
    pub fn haproxy_1hop(upstream: SocketAddr) -> Result<Self, String> {
        let dir = tempdir()?;
        let listen = free_addr();
        let cfg = write(
            dir.path(),
            "haproxy.cfg",
            &haproxy::one_hop(listen, upstream),
        )?;
        let child = start_haproxy(&cfg)?;
        Self::ready(vec![child], listen, dir)
    }

    /// The Istio-shaped path through two HAProxy processes: client sidecar → mTLS → server
    /// sidecar → `upstream`.
    pub fn haproxy_2hop_mtls(upstream: SocketAddr) -> Result<Self, String> {
        let dir = tempdir()?;
        let pki = pki(dir.path())?;
        let (listen, server_addr) = (free_addr(), free_addr());
        let server = write(
            dir.path(),
            "server.cfg",
            &haproxy::server_half(server_addr, upstream, &pki.server.ca, &pki.server_pem),
        )?;
        let client = write(
            dir.path(),
            "client.cfg",
            &haproxy::client_half(listen, server_addr, &pki.client.ca, &pki.client_pem),
        )?;
        let children = vec![start_haproxy(&server)?, start_haproxy(&client)?];
        Self::ready(children, listen, dir)
    }

    /// One Envoy hop in front of `upstream`, HTTP/1.1 or HTTP/2 to it.
    pub fn envoy_1hop(upstream: SocketAddr, proto: envoy::Proto) -> Result<Self, String> {
        let dir = tempdir()?;
        let listen = free_addr();
        let cfg = envoy::bootstrap(
            "hop",
            &envoy::Downstream::Plain(listen),
            &envoy::Upstream::Plain(upstream),
            proto,
        );
        let child = start_envoy(&write(dir.path(), "envoy.yaml", &cfg)?)?;
        Self::ready(vec![child], listen, dir)
    }

    /// Istio's path with Envoy on both sides: outbound sidecar → mTLS (SPIFFE IDs verified) →
    /// inbound sidecar → `upstream`.
    pub fn envoy_2hop_mtls(upstream: SocketAddr, proto: envoy::Proto) -> Result<Self, String> {
        let dir = tempdir()?;
        let pki = pki(dir.path())?;
        let (listen, server_addr) = (free_addr(), free_addr());
        let inbound = envoy::bootstrap(
            "inbound",
            &envoy::Downstream::Mtls {
                addr: server_addr,
                certs: pki.server.clone(),
                trust_domain: "cluster.local".into(),
            },
            &envoy::Upstream::Plain(upstream),
            proto,
        );
        let outbound = envoy::bootstrap(
            "outbound",
            &envoy::Downstream::Plain(listen),
            &envoy::Upstream::Mtls {
                addr: server_addr,
                certs: pki.client.clone(),
                server_id: SERVER_ID.into(),
                sni: "localhost".into(),
            },
            proto,
        );
        let inbound = start_envoy(&write(dir.path(), "inbound.yaml", &inbound)?)?;
        let outbound = start_envoy(&write(dir.path(), "outbound.yaml", &outbound)?)?;
        Self::ready(vec![inbound, outbound], listen, dir)
    }

    fn ready(
        mut children: Vec<Child>,
        listen: SocketAddr,
        dir: tempfile::TempDir,
    ) -> Result<Self, String> {
        // Envoy listens 0.2–0.6 s after its start; the first connect may land before that.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(listen).is_ok() {
                break;
            }
            if let Some(status) = children
                .iter_mut()
                .find_map(|c| c.try_wait().ok().flatten())
            {
                stop(&mut children);
                return Err(format!("a sidecar exited at start: {status}"));
            }
            if Instant::now() > deadline {
                stop(&mut children);
                return Err(format!(
                    "the sidecar did not listen on {listen} within 15 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            children,
            listen,
            _dir: dir,
        })
    }

    /// CPU time the sidecar processes have used so far (utime + stime of all their threads).
    pub fn cpu(&self) -> Duration {
        self.children.iter().map(|c| proc_cpu(c.id())).sum()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        stop(&mut self.children);
    }
}

fn stop(children: &mut [Child]) {
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn tempdir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("mesh-sidecar.")
        .tempdir()
        .map_err(|e| format!("cannot make a temp dir for the sidecar: {e}"))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    Ok(p)
}

fn start_haproxy(cfg: &Path) -> Result<Child, String> {
    let bin = binary("haproxy")?;
    Command::new(&bin)
        .arg("-db")
        .arg("-f")
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

fn start_envoy(cfg: &Path) -> Result<Child, String> {
    let bin = binary("envoy")?;
    Command::new(&bin)
        .args(envoy::args(cfg))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

/// utime + stime of a process, from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let ticks: u64 = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}
