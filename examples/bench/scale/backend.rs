//! The `scale` scenario's backend: a child process (the bench binary run with
//! [`BACKEND_ARG`]) that answers on every loopback address, so that one backend serves
//! thousands of distinct endpoint addresses and both ends of 10,000 connections fit the
//! per-process file limit.

use std::net::SocketAddr;

use crate::backend;

/// A listener on every loopback address (0.0.0.0 bound to the `lo` device), so that one
/// backend answers thousands of distinct endpoint addresses.
fn loopback_wide_listener() -> Result<tokio::net::TcpListener, String> {
    use socket2::{Domain, Socket, Type};
    let fail = |what: &str, e: std::io::Error| format!("scale backend: {what}: {e}");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| fail("socket", e))?;
    s.bind_device(Some(b"lo")).map_err(|e| {
        fail(
            "binding to the lo device (needs CAP_NET_RAW: run as root)",
            e,
        )
    })?;
    s.set_reuse_address(true)
        .map_err(|e| fail("SO_REUSEADDR", e))?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into())
        .map_err(|e| fail("bind", e))?;
    s.listen(4096).map_err(|e| fail("listen", e))?;
    s.set_nonblocking(true)
        .map_err(|e| fail("non-blocking", e))?;
    tokio::net::TcpListener::from_std(s.into()).map_err(|e| fail("tokio listener", e))
}

/// Raises the open-file soft limit to the hard one and checks that `want` fit: the client
/// holds ~12,000 connections (the backend process holds the other ends).
pub(super) fn raise_fd_limit(want: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed and nothing else.
    let ok = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if ok && lim.rlim_max >= want {
        Ok(())
    } else {
        Err(format!(
            "scale needs {want} open files per process and the hard limit is {}: raise `ulimit -Hn`",
            lim.rlim_max
        ))
    }
}

/// The argument that makes the bench binary the `scale` backend (a child process of its own:
/// the client's and the backend's ends of 12,000 connections do not fit one process's file
/// limit, and the rows then count the client's CPU alone).
pub const BACKEND_ARG: &str = "__scale-backend";

/// The backend child's `main`: serves on every loopback address, prints `port N`, and exits
/// when its stdin closes (the bench also kills it by pid).
pub fn backend_main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    if let Err(e) = raise_fd_limit(16_384) {
        eprintln!("{e}");
        return std::process::ExitCode::from(2);
    }
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scale backend runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    rt.block_on(async {
        let backend = match loopback_wide_listener() {
            Ok(l) => backend::serve(l, backend::Behavior::default()),
            Err(e) => {
                eprintln!("{e}");
                return std::process::ExitCode::from(2);
            }
        };
        println!("port {}", backend.addr.port());
        let _ = std::io::stdout().flush();
        std::future::pending::<()>().await;
        std::process::ExitCode::SUCCESS
    })
}

/// The backend child process, stopped by pid on drop.
pub(super) struct BackendProcess {
    child: std::process::Child,
    pub(super) port: u16,
}

impl BackendProcess {
    pub(super) fn start() -> Result<Self, String> {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
        let mut child = Command::new(exe)
            .arg(BACKEND_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the scale backend: {e}"))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| std::io::BufReader::new(out).read_line(&mut line));
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok());
        match (read, port) {
            (Some(Ok(_)), Some(port)) => Ok(Self { child, port }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "the scale backend did not start (it said {line:?})"
                ))
            }
        }
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
