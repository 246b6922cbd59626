//! Loading and validating certificates, keys and bundles.

use std::{path::Path, sync::Arc, time::SystemTime};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

use super::{TlsError, TlsFiles};

/// The material in force and the crypto provider: what the verifiers and the certificate
/// resolvers read at each handshake (the store swaps `current` on rotation).
pub(crate) struct Live {
    pub(crate) current: arc_swap::ArcSwap<Material>,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
}
use crate::identity::SpiffeId;

/// One validated generation of a workload's material.
pub(crate) struct Material {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) identity: SpiffeId,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client_verifier: Arc<dyn ClientCertVerifier>,
    pub(crate) not_after: SystemTime,
}

fn read_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(read_err(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The SPIFFE ID a certificate carries: exactly one `spiffe://` URI SAN (SPIFFE X509-SVID §2).
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut ids = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with("spiffe://") {
                    ids.push(SpiffeId::parse(uri).map_err(|e| e.to_string())?);
                }
            }
        }
    }
    match ids.len() {
        1 => Ok(ids.remove(0)),
        0 => Err("no SPIFFE ID (spiffe:// URI SAN)".into()),
        n => Err(format!("{n} SPIFFE IDs; an X509-SVID carries exactly one")),
    }
}

/// Validity period of a certificate.
pub(crate) fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), String> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let v = x509.validity();
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(secs.unsigned_abs())
        }
    };
    Ok((at(v.not_before), at(v.not_after)))
}

/// Reads and validates all three files.
pub(crate) fn load(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<Material, TlsError> {
    let chain = certs(&files.cert_chain)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| read_err(&files.key, e))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| read_err(&files.key, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain.clone(), signing);
    certified.keys_match().map_err(|_| TlsError::KeyMismatch {
        cert: files.cert_chain.clone(),
        key: files.key.clone(),
    })?;
    let (not_before, not_after) =
        validity(&chain[0]).map_err(|reason| read_err(&files.cert_chain, reason))?;
    let now = SystemTime::now();
    if now < not_before || now > not_after {
        return Err(TlsError::Validity {
            path: files.cert_chain.clone(),
            not_before,
            not_after,
        });
    }
    let identity = spiffe_id_of(&chain[0]).map_err(|reason| TlsError::Identity {
        path: files.cert_chain.clone(),
        reason,
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.trust_bundle)? {
        roots
            .add(ca)
            .map_err(|e| read_err(&files.trust_bundle, format!("bad CA certificate: {e}")))?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Material {
        certified: Arc::new(certified),
        identity,
        roots,
        client_verifier,
        not_after,
    })
}
