//! Network faults in network namespaces the test creates (as root, with iproute2; skipped with
//! a message otherwise): a client namespace and a server namespace joined by a veth pair, three
//! backends on three addresses of the server side, and one endpoint blackholed from the client
//! side by a `blackhole` route (new connections fail, packets of open ones vanish), then
//! restored. The client runs in its namespace as a child process and reports what it saw.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mesh::core::ServiceConfig;

use super::{Load, child::Child, client, tally};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and a veth pair; deleted (with the pair) when dropped.
struct Net {
    client: String,
    server: String,
}

impl Net {
    fn create() -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let n = std::process::id() % 100_000;
        let net = Net {
            client: format!("meshf-c{n}"),
            server: format!("meshf-s{n}"),
        };
        let (vc, vs) = (format!("mfc{n}"), format!("mfs{n}"));
        ip(&["netns", "add", &net.client])?;
        ip(&["netns", "add", &net.server])?;
        ip(&["link", "add", &vc, "type", "veth", "peer", "name", &vs])?;
        ip(&["link", "set", &vc, "netns", &net.client])?;
        ip(&["link", "set", &vs, "netns", &net.server])?;
        ip(&[
            "-n",
            &net.client,
            "addr",
            "add",
            "10.201.0.1/24",
            "dev",
            &vc,
        ])?;
        for a in ["10.201.0.2/24", "10.201.0.3/24", "10.201.0.4/24"] {
            ip(&["-n", &net.server, "addr", "add", a, "dev", &vs])?;
        }
        for (ns, dev) in [(&net.client, &vc), (&net.server, &vs)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.client]);
        let _ = ip(&["netns", "del", &self.server]);
    }
}

#[test]
fn a_blackholed_endpoint_is_ejected_and_rejoins_when_its_route_returns() {
    let net = match Net::create() {
        Ok(net) => net,
        Err(e) => {
            println!(
                "SKIPPED: network namespaces are not available here ({e}); run as root with iproute2"
            );
            return;
        }
    };
    let addrs = ["10.201.0.2:8080", "10.201.0.3:8080", "10.201.0.4:8080"];
    let kids: Vec<Child> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| Child::spawn_in(&net.server, &format!("n{i}"), a.parse().unwrap()))
        .collect();
    let exe = std::env::current_exe().unwrap();
    let mut client = Command::new("ip")
        .args(["netns", "exec", &net.client])
        .arg(&exe)
        .args([
            "--exact",
            "netns::netns_client",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FAULTS_NETNS_ENDPOINTS", addrs.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            panic!("the client in the namespace did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut client.stdout.take().unwrap(), &mut out).unwrap();
    drop(kids);
    let result = out
        .lines()
        .find_map(|l| l.find("RESULT ").map(|at| l[at + 7..].to_owned()))
        .unwrap_or_else(|| panic!("no result from the client ({status}):\n{out}"));
    println!("{result}");
    assert!(status.success() && result.starts_with("ok"), "{result}");
}

/// The client's side, run inside the client namespace by the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run inside a network namespace by a_blackholed_endpoint_is_ejected_and_rejoins_when_its_route_returns"]
async fn netns_client() {
    let Ok(endpoints) = std::env::var("FAULTS_NETNS_ENDPOINTS") else {
        return;
    };
    let addrs: Vec<std::net::SocketAddr> =
        endpoints.split(',').map(|a| a.parse().unwrap()).collect();
    let victim = addrs[1];
    let mut config = ServiceConfig::default();
    config.route.retries.per_try_timeout = Some(Duration::from_millis(300));
    config.destination.connect_timeout = Some(Duration::from_millis(500));
    config.destination.balance.outlier_detection = Some(super::quick_ejection());
    let client = client(&addrs, config);
    let started = Instant::now();
    let load = Load::start(
        &client,
        "http://reviews.test:9080/",
        8,
        100_000,
        Duration::from_secs(60),
    );
    load.until(300).await;
    let route = format!("{}/32", victim.ip());
    ip(&["route", "add", "blackhole", &route]).unwrap();
    let ejected = super::ejection_of(&client, victim).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ip(&["route", "del", "blackhole", &route]).unwrap();
    let restored = started.elapsed();
    let back = load.answered_by_since("n1", restored).await;
    let rejoined = started.elapsed() - restored;
    load.until(load.done() + 300).await;
    let seen = load.finish().await;
    let verdict = if ejected.is_some() && back && seen.success() >= 0.995 {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "RESULT {verdict}: endpoint {victim} blackholed by a route: ejected after {}; route restored, \
         answering again after {:.0} ms ({back}); {}/{} succeeded ({:.3} %); failures {:?}",
        ejected.map_or("never".to_owned(), |d| format!(
            "{:.0} ms",
            d.as_secs_f64() * 1e3
        )),
        rejoined.as_secs_f64() * 1e3,
        seen.ok,
        seen.total(),
        seen.success() * 100.0,
        tally(&seen.failures)
    );
}
