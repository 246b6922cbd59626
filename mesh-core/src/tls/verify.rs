//! rustls verifiers and certificate resolvers that follow the current material.

use std::{fmt, sync::Arc};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
    client::{
        ResolvesClientCert,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

use super::material::{Live, spiffe_id_of};
use crate::identity::SpiffeId;

/// The server proved a different identity than the one expected for the endpoint: the client
/// refused the connection. Found in the source chain of connect errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server identity mismatch: expected {expected}, the server presented {}", actual.as_ref().map_or("no SPIFFE ID".to_owned(), |a| a.to_string()))]
pub struct IdentityMismatch {
    /// The identity the destination's configuration or endpoint metadata asks for.
    pub expected: SpiffeId,
    /// The identity the server's certificate carries.
    pub actual: Option<SpiffeId>,
}

impl IdentityMismatch {
    /// Finds a mismatch in an error's source chain, through `io::Error`s and the rustls
    /// certificate error the verifier returns it in.
    pub fn find_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a IdentityMismatch> {
        let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(m) = err.downcast_ref::<IdentityMismatch>() {
                return Some(m);
            }
            if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
                err.downcast_ref::<rustls::Error>()
            {
                if let Some(m) = other.0.downcast_ref::<IdentityMismatch>() {
                    return Some(m);
                }
            }
            if let Some(inner) = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                if let Some(m) = Self::find_in(inner) {
                    return Some(m);
                }
            }
            cur = err.source();
        }
        None
    }
}

/// Verifies servers: chain to the current bundle, then the SPIFFE ID.
pub(crate) struct SpiffeServerVerifier {
    store: Arc<Live>,
    expected: Option<SpiffeId>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(store: Arc<Live>, expected: Option<SpiffeId>) -> Self {
        Self { store, expected }
    }
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected)
            .finish()
    }
}

fn cert_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CertRevoked => CertificateError::Revoked,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let material = self.store.current.load();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(cert_error)?;
        cert.verify_for_usage(
            self.store.provider.signature_verification_algorithms.all,
            &material.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(cert_error)?;
        if let Some(expected) = &self.expected {
            let actual = spiffe_id_of(end_entity).ok();
            if actual.as_ref() != Some(expected) {
                let mismatch = IdentityMismatch {
                    expected: expected.clone(),
                    actual,
                };
                tracing::warn!(error = %mismatch, "refusing server");
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(mismatch)),
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.store.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.store.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.store
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies clients against the current bundle (webpki's verifier of the current material).
pub(crate) struct RotatingClientVerifier(pub(crate) Arc<Live>);

impl fmt::Debug for RotatingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RotatingClientVerifier")
    }
}

impl ClientCertVerifier for RotatingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to outlive a rotation; clients present their only certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current
            .load()
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents the current certificate (client and server side).
pub(crate) struct CurrentCert(pub(crate) Arc<Live>);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load().certified.clone())
    }
}
