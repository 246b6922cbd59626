//! Test PKI: a development CA in a temp dir and workload certificates for SPIFFE IDs.

use std::path::PathBuf;

use mesh::core::{
    SpiffeId,
    dev_ca::DevCa,
    tls::{TlsFiles, TlsSettings, TlsStore},
};

pub const TD: &str = "cluster.local";

pub fn id(sa: &str) -> SpiffeId {
    format!("spiffe://{TD}/ns/default/sa/{sa}").parse().unwrap()
}

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

impl Pki {
    pub fn new() -> Self {
        Self::named("test CA")
    }

    pub fn named(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new(name).unwrap();
        ca.write(dir.path()).unwrap();
        Self { dir, ca }
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues `name`.pem / `name`-key.pem for service account `sa` (SANs: localhost, 127.0.0.1).
    pub fn workload(&self, name: &str, sa: &str) -> TlsFiles {
        let cert = self
            .ca
            .issue(id(sa), &["localhost", "127.0.0.1"], 1)
            .unwrap();
        let (c, k) = cert.write(self.dir.path(), name).unwrap();
        TlsFiles::new(c, k, self.bundle())
    }

    pub fn store(&self, name: &str, sa: &str) -> TlsStore {
        TlsStore::load(self.workload(name, sa), TlsSettings::default()).unwrap()
    }
}
