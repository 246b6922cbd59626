//! The sidecar anchor: a real HAProxy hop, from `../shared/bench/sidecar/`, started and stopped by
//! the bench itself.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where the sidecar kit is: `--sidecar-kit`, `$MESH_SIDECAR_KIT`, or `../shared/bench/sidecar`
/// next to the workspace.
pub fn kit_dir(flag: Option<&str>) -> PathBuf {
    if let Some(dir) = flag {
        return PathBuf::from(dir);
    }
    if let Ok(dir) = std::env::var("MESH_SIDECAR_KIT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/sidecar")
}

pub struct HaProxy {
    children: Vec<Child>,
    pub listen: SocketAddr,
    /// Holds the generated certificates of the 2-hop setup.
    _certs: Option<tempfile::TempDir>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn find_haproxy() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

impl HaProxy {
    /// Starts `haproxy-1hop.cfg` in front of `upstream`. Fails with instructions when HAProxy
    /// or the kit is missing: the bench never silently drops the sidecar variant.
    pub fn start_1hop(kit: &Path, upstream: SocketAddr) -> Result<Self, String> {
        let cfg = kit_file(kit, "haproxy-1hop.cfg")?;
        let bin = haproxy_bin()?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn(
            &bin,
            &cfg,
            &[
                ("SIDECAR_LISTEN", listen.to_string()),
                ("SIDECAR_UPSTREAM", upstream.to_string()),
                ("SIDECAR_THREADS", "1".into()),
            ],
        )?;
        let mut hp = HaProxy {
            children: vec![child],
            listen,
            _certs: None,
        };
        hp.wait_listening()?;
        Ok(hp)
    }

    /// Starts the Istio-shaped path of `haproxy-2hop-mtls.cfg`: a client-side sidecar (plain
    /// in, mTLS out) and a server-side sidecar (mTLS in, plain out to `upstream`), as two
    /// processes, with certificates made by the kit's `gen-certs.sh`.
    pub fn start_2hop_mtls(kit: &Path, upstream: SocketAddr) -> Result<Self, String> {
        let cfg = kit_file(kit, "haproxy-2hop-mtls.cfg")?;
        let gen_certs = kit_file(kit, "gen-certs.sh")?;
        let bin = haproxy_bin()?;
        let certs = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("bash")
            .arg(&gen_certs)
            .arg(certs.path())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", gen_certs.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed (is openssl installed? apt-get install -y openssl): {}",
                gen_certs.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let server_sidecar = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let common = |role: &str| {
            vec![
                ("SIDECAR_ROLE", role.to_owned()),
                ("SIDECAR_CERT_DIR", certs.path().display().to_string()),
                ("CLIENT_SIDECAR_LISTEN", listen.to_string()),
                ("SERVER_SIDECAR_ADDR", server_sidecar.to_string()),
                ("SIDECAR_UPSTREAM", upstream.to_string()),
                ("SIDECAR_THREADS", "1".to_owned()),
            ]
        };
        let server = spawn(&bin, &cfg, &common("server"))?;
        let client = spawn(&bin, &cfg, &common("client"))?;
        let mut hp = HaProxy {
            children: vec![server, client],
            listen,
            _certs: Some(certs),
        };
        hp.wait_listening()?;
        Ok(hp)
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.listen).is_err() {
            for c in &mut self.children {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("haproxy exited at start: {status}"));
                }
            }
            if Instant::now() > deadline {
                return Err("haproxy did not listen within 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// CPU time the HAProxy processes have used so far (utime + stime from /proc).
    pub fn cpu(&self) -> Duration {
        self.children.iter().map(|c| proc_cpu(c.id())).sum()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kit_file(kit: &Path, name: &str) -> Result<PathBuf, String> {
    let f = kit.join(name);
    if f.is_file() {
        Ok(f)
    } else {
        Err(format!(
            "sidecar kit not found: {} does not exist (pass --sidecar-kit DIR or set MESH_SIDECAR_KIT)",
            f.display()
        ))
    }
}

fn haproxy_bin() -> Result<PathBuf, String> {
    find_haproxy().ok_or_else(|| {
        "haproxy is not installed; the sidecar variants need it:\n    \
         apt-get update && apt-get install -y haproxy\n\
         (or run ../shared/bench/sidecar/start.sh once as root, which installs the kit's tools)"
            .to_owned()
    })
}

fn spawn(bin: &Path, cfg: &Path, env: &[(&str, String)]) -> Result<Child, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(cfg);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start haproxy: {e}"))
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
