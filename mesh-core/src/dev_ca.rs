//! A development certificate authority (feature `dev-ca`). **For development and tests only**:
//! keys are generated in memory and written unencrypted; a real mesh takes its certificates from
//! SPIRE, cert-manager or Istio's CA.
//!
//! ```
//! use mesh_core::dev_ca::DevCa;
//!
//! let ca = DevCa::new("mesh dev CA").unwrap();
//! let cert = ca.issue("spiffe://cluster.local/ns/default/sa/reviews".parse().unwrap(), &["localhost"], 30).unwrap();
//! assert!(cert.chain_pem.contains("BEGIN CERTIFICATE"));
//! ```

use std::{net::IpAddr, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::identity::SpiffeId;

/// A CA that issues workload certificates.
pub struct DevCa {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A workload certificate and its key, in PEM.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    /// The leaf certificate (the chain: leaf only, the CA is in the bundle).
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

/// The dev CA failed (rcgen).
#[derive(Debug, thiserror::Error)]
#[error("dev CA: {0}")]
pub struct DevCaError(String);

fn err(e: impl std::fmt::Display) -> DevCaError {
    DevCaError(e.to_string())
}

impl DevCa {
    /// A new self-signed CA (ECDSA P-256), valid ten years.
    pub fn new(name: &str) -> Result<Self, DevCaError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "mesh (development only)");
        params.distinguished_name = dn;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(err)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let issuer = Issuer::new(params, key);
        Ok(Self {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// Loads a CA written by [`write`](Self::write).
    pub fn load(dir: &Path) -> Result<Self, DevCaError> {
        let cert_pem = std::fs::read_to_string(dir.join("ca.pem")).map_err(err)?;
        let key_pem = std::fs::read_to_string(dir.join("ca-key.pem")).map_err(err)?;
        let key = KeyPair::from_pem(&key_pem).map_err(err)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(err)?;
        Ok(Self {
            cert_pem,
            key_pem,
            issuer,
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &self.cert_pem)?;
        write_private(&dir.join("ca-key.pem"), &self.key_pem)
    }

    /// The CA certificate (the trust bundle), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a workload certificate for `id` (URI SAN), valid `days` days from an hour ago,
    /// usable for both server and client authentication. `names` become DNS SANs (or IP SANs
    /// when they parse as addresses), for non-mesh clients such as curl.
    pub fn issue(&self, id: SpiffeId, names: &[&str], days: i64) -> Result<IssuedCert, DevCaError> {
        let now = time::OffsetDateTime::now_utc();
        self.issue_valid(
            id,
            names,
            now - time::Duration::hours(1),
            now + time::Duration::days(days),
        )
    }

    /// Issues a certificate with an explicit validity (tests of expired certificates).
    pub fn issue_valid(
        &self,
        id: SpiffeId,
        names: &[&str],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<IssuedCert, DevCaError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut sans = vec![SanType::URI(id.as_str().try_into().map_err(err)?)];
        for n in names {
            match n.parse::<IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName((*n).try_into().map_err(err)?)),
            }
        }
        params.subject_alt_names = sans;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(IssuedCert {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl IssuedCert {
    /// Writes `<name>.pem` (chain) and `<name>-key.pem` into `dir`; returns their paths.
    pub fn write(
        &self,
        dir: &Path,
        name: &str,
    ) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &self.chain_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(pem.as_bytes())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, pem)
    }
}

/// Default validity of issued certificates in days.
pub const DEFAULT_DAYS: i64 = 30;
