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

/// A raw rustls client configuration (ring): trusts `bundle`, presents `client_cert` when
/// given.
pub fn client_config(
    bundle: &std::path::Path,
    client_cert: Option<&TlsFiles>,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).expect("a readable trust bundle") {
        roots
            .add(c.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(f) => {
            let chain = CertificateDer::pem_file_iter(&f.cert_chain)
                .expect("a readable certificate chain")
                .collect::<Result<Vec<_>, _>>()
                .expect("PEM certificates");
            let key = PrivateKeyDer::from_pem_file(&f.key).expect("a PEM private key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("a usable client certificate")
        }
    };
    std::sync::Arc::new(config)
}

/// One HTTP/1.1 `GET /` over TLS from a raw rustls client, for what a mesh client never does
/// (no client certificate, one from another CA or trust domain): trusts `bundle`, verifies the
/// server name `localhost`, presents `client_cert` when given. `Ok(response)` when the status
/// is 200; otherwise `Err` with the response or the TLS / IO error (a TLS 1.3 server refuses a
/// client certificate after the handshake, so that shows up on the first read).
pub async fn tls_get(
    addr: std::net::SocketAddr,
    bundle: &std::path::Path,
    client_cert: Option<&TlsFiles>,
) -> Result<String, String> {
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(client_config(bundle, client_cert));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{e:?}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| format!("{e:?}"))?;
    if out.starts_with("HTTP/1.1 200") {
        Ok(out)
    } else {
        Err(out)
    }
}
