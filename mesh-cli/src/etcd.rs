//! `mesh apply` and `mesh get`: Istio documents in etcd (feature `etcd`).

use std::path::PathBuf;

use clap::Args;

use crate::{Docs, Outcome};

/// Where in etcd.
#[derive(Args)]
pub(crate) struct Etcd {
    /// etcd's endpoints: `etcd://host:port[,host:port]` (`etcds://` for TLS, with --cacert).
    #[arg(long, env = "MESH_ETCD")]
    etcd: String,
    /// The key prefix of the documents (or, for `get endpoints`, of the endpoint records).
    #[arg(long)]
    prefix: Option<String>,
    /// etcd user (`name:password`), when auth is enabled.
    #[arg(long)]
    user: Option<String>,
    /// CA bundle for TLS to etcd.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate and key for TLS to etcd.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client key for TLS to etcd.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

/// What `mesh get` lists.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum What {
    /// The Istio documents.
    Documents,
    /// The endpoint records of the registry.
    Endpoints,
}

#[cfg(feature = "etcd")]
mod imp {
    use super::*;
    use mesh_etcd::{
        ApplyOptions, DEFAULT_CONFIG_PREFIX, DEFAULT_SERVICES_PREFIX, EtcdError, EtcdOptions,
        EtcdTls,
    };

    impl Etcd {
        fn options(&self) -> Result<EtcdOptions, String> {
            let mut o = EtcdOptions::from_url(&self.etcd).map_err(|e| e.to_string())?;
            if let Some(user) = &self.user {
                let (u, p) = user
                    .split_once(':')
                    .ok_or("--user: expected name:password")?;
                o = o.with_user(u, p);
            }
            if let Some(ca) = &self.cacert {
                o = o.with_tls(EtcdTls {
                    ca: ca.clone(),
                    client: self.cert.clone().zip(self.key.clone()),
                    domain: None,
                });
            }
            Ok(o)
        }
    }

    fn runtime() -> Result<tokio::runtime::Runtime, String> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))
    }

    pub(crate) fn apply(
        docs: &Docs,
        etcd: &Etcd,
        paths: &[PathBuf],
        expect_revision: Option<i64>,
    ) -> Result<Outcome, String> {
        let (workload, load) = docs.workload()?;
        let options = ApplyOptions {
            prefix: etcd
                .prefix
                .clone()
                .unwrap_or_else(|| DEFAULT_CONFIG_PREFIX.to_owned()),
            workload,
            load,
            expect_revision,
        };
        let etcd = etcd.options()?;
        match runtime()?.block_on(mesh_etcd::apply(&etcd, paths, &options)) {
            Ok(applied) => {
                let mut out = String::new();
                for k in &applied.written {
                    out.push_str(&format!("{k} written\n"));
                }
                for k in &applied.unchanged {
                    out.push_str(&format!("{k} unchanged\n"));
                }
                for w in &applied.warnings {
                    out.push_str(&format!("warning: {w}\n"));
                }
                out.push_str(&format!("revision {}\n", applied.revision));
                Ok(Outcome::Ok(out))
            }
            Err(EtcdError::Invalid(errors)) => Ok(Outcome::Invalid(format!(
                "{errors}\nnothing was written to etcd\n"
            ))),
            Err(e @ EtcdError::Conflict { .. }) => Ok(Outcome::Invalid(format!("{e}\n"))),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(crate) fn get(etcd: &Etcd, what: What, full: bool) -> Result<Outcome, String> {
        let prefix = etcd.prefix.clone().unwrap_or_else(|| {
            match what {
                What::Documents => DEFAULT_CONFIG_PREFIX,
                What::Endpoints => DEFAULT_SERVICES_PREFIX,
            }
            .to_owned()
        });
        let options = etcd.options()?;
        let (docs, revision) = runtime()?
            .block_on(mesh_etcd::list(&options, &prefix))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        for d in &docs {
            let name = match (&d.id, what) {
                (Some((kind, ns, name)), What::Documents) => format!("{kind} {ns}/{name}"),
                _ => d.key.strip_prefix(&prefix).unwrap_or(&d.key).to_owned(),
            };
            if full {
                out.push_str(&format!(
                    "# {name} (key {}, revision {})\n{}\n",
                    d.key, d.mod_revision, d.text
                ));
            } else {
                out.push_str(&format!("{name}\trevision {}\n", d.mod_revision));
            }
        }
        out.push_str(&format!(
            "{} under {prefix} at revision {revision}\n",
            docs.len()
        ));
        Ok(Outcome::Ok(out))
    }
}

#[cfg(feature = "etcd")]
pub(crate) use imp::{apply, get};

#[cfg(not(feature = "etcd"))]
const NO_ETCD: &str = "this mesh was built without etcd: build it with `--features etcd` (needs protoc: scripts/deps installs it)";

#[cfg(not(feature = "etcd"))]
pub(crate) fn apply(_: &Docs, _: &Etcd, _: &[PathBuf], _: Option<i64>) -> Result<Outcome, String> {
    Err(NO_ETCD.into())
}

#[cfg(not(feature = "etcd"))]
pub(crate) fn get(_: &Etcd, _: What, _: bool) -> Result<Outcome, String> {
    Err(NO_ETCD.into())
}
