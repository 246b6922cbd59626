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
    child: Child,
    pub listen: SocketAddr,
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
        let cfg = kit.join("haproxy-1hop.cfg");
        if !cfg.is_file() {
            return Err(format!(
                "sidecar kit not found: {} does not exist (pass --sidecar-kit DIR or set MESH_SIDECAR_KIT)",
                cfg.display()
            ));
        }
        let Some(bin) = find_haproxy() else {
            return Err("haproxy is not installed; the sidecar variant needs it:\n    \
                 apt-get update && apt-get install -y haproxy\n\
                 (or run ../shared/bench/sidecar/start.sh once as root, which installs the kit's tools)"
                .to_owned());
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("SIDECAR_LISTEN", listen.to_string())
            .env("SIDECAR_UPSTREAM", upstream.to_string())
            .env("SIDECAR_THREADS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start haproxy: {e}"))?;
        let mut hp = HaProxy { child, listen };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(listen).is_err() {
            if let Ok(Some(status)) = hp.child.try_wait() {
                return Err(format!("haproxy exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err("haproxy did not listen within 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(hp)
    }

    /// CPU time HAProxy has used so far (utime + stime from /proc).
    pub fn cpu(&self) -> Duration {
        proc_cpu(self.child.id())
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
