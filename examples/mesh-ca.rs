//! A development certificate authority for mesh workloads. **Development only**: keys are
//! written unencrypted; production meshes take certificates from SPIRE, cert-manager or Istio.
//!
//! ```text
//! cargo run --example mesh-ca -- init  DIR                      # DIR/ca.pem, DIR/ca-key.pem
//! cargo run --example mesh-ca -- issue DIR SPIFFE_ID NAME [--days N] [--san HOST_OR_IP]...
//!                                                               # DIR/NAME.pem, DIR/NAME-key.pem
//! ```
//!
//! e.g. `mesh-ca issue certs spiffe://cluster.local/ns/default/sa/reviews reviews --san localhost --san 127.0.0.1`

use std::{path::PathBuf, process::ExitCode};

use mesh::core::{
    SpiffeId,
    dev_ca::{DEFAULT_DAYS, DevCa},
};

const USAGE: &str =
    "usage: mesh-ca init DIR | mesh-ca issue DIR SPIFFE_ID NAME [--days N] [--san HOST_OR_IP]...";

fn run(args: Vec<String>) -> Result<String, String> {
    match args.first().map(String::as_str) {
        Some("init") => {
            let dir = PathBuf::from(args.get(1).ok_or(USAGE)?);
            let ca = DevCa::new("mesh development CA").map_err(|e| e.to_string())?;
            ca.write(&dir)
                .map_err(|e| format!("writing {}: {e}", dir.display()))?;
            Ok(format!(
                "wrote {0}/ca.pem and {0}/ca-key.pem (development only)",
                dir.display()
            ))
        }
        Some("issue") => {
            let dir = PathBuf::from(args.get(1).ok_or(USAGE)?);
            let id: SpiffeId = args
                .get(2)
                .ok_or(USAGE)?
                .parse()
                .map_err(|e| format!("{e}"))?;
            let name = args.get(3).ok_or(USAGE)?;
            let (mut days, mut sans) = (DEFAULT_DAYS, Vec::new());
            let mut rest = args[4..].iter();
            while let Some(flag) = rest.next() {
                let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
                match flag.as_str() {
                    "--days" => {
                        days = value.parse().map_err(|_| format!("bad --days {value:?}"))?
                    }
                    "--san" => sans.push(value.clone()),
                    other => return Err(format!("unknown flag {other}\n{USAGE}")),
                }
            }
            let ca = DevCa::load(&dir)
                .map_err(|e| format!("{e} (run `mesh-ca init {}` first)", dir.display()))?;
            let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
            let cert = ca
                .issue(id.clone(), &sans, days)
                .map_err(|e| e.to_string())?;
            let (c, k) = cert.write(&dir, name).map_err(|e| e.to_string())?;
            Ok(format!(
                "issued {id} for {days} days: {} and {}",
                c.display(),
                k.display()
            ))
        }
        _ => Err(USAGE.into()),
    }
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
