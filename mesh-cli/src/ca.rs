//! `mesh ca`: a development certificate authority for mesh workloads. **Development only**:
//! keys are written unencrypted; production meshes take certificates from SPIRE, cert-manager
//! or Istio.

use std::path::PathBuf;

use clap::Subcommand;
use mesh_core::{
    SpiffeId,
    dev_ca::{DEFAULT_DAYS, DevCa},
};

/// The CA's commands.
#[derive(Subcommand)]
pub(crate) enum CaCommand {
    /// Creates a CA: DIR/ca.pem and DIR/ca-key.pem.
    Init {
        /// Where to write it.
        dir: PathBuf,
    },
    /// Issues a workload certificate for a SPIFFE ID: DIR/NAME.pem and DIR/NAME-key.pem.
    Issue {
        /// The CA's directory.
        dir: PathBuf,
        /// The workload's identity (`spiffe://cluster.local/ns/default/sa/reviews`).
        id: String,
        /// The file name.
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_DAYS)]
        days: i64,
        /// A DNS name or IP the certificate is also for (repeatable).
        #[arg(long)]
        san: Vec<String>,
    },
}

pub(crate) fn run(cmd: CaCommand) -> Result<String, String> {
    match cmd {
        CaCommand::Init { dir } => {
            let ca = DevCa::new("mesh development CA").map_err(|e| e.to_string())?;
            ca.write(&dir)
                .map_err(|e| format!("writing {}: {e}", dir.display()))?;
            Ok(format!(
                "wrote {0}/ca.pem and {0}/ca-key.pem (development only)\n",
                dir.display()
            ))
        }
        CaCommand::Issue {
            dir,
            id,
            name,
            days,
            san,
        } => {
            let id: SpiffeId = id.parse().map_err(|e| format!("{e}"))?;
            let ca = DevCa::load(&dir)
                .map_err(|e| format!("{e} (run `mesh ca init {}` first)", dir.display()))?;
            let sans: Vec<&str> = san.iter().map(String::as_str).collect();
            let cert = ca
                .issue(id.clone(), &sans, days)
                .map_err(|e| e.to_string())?;
            let (c, k) = cert.write(&dir, &name).map_err(|e| e.to_string())?;
            Ok(format!(
                "issued {id} for {days} days: {} and {}\n",
                c.display(),
                k.display()
            ))
        }
    }
}
