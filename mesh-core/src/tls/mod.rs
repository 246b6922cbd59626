//! Workload TLS: certificates, rotation, SPIFFE verification (rustls, ring provider).
//!
//! A [`TlsStore`] holds a workload's identity material — its certificate chain, private key and
//! the trust bundle, read from PEM files (as cert-manager, SPIRE or Istio's agent write them) —
//! and builds rustls configurations that always use the **current** material:
//!
//! - clients verify the server's chain against the bundle **and** that its SPIFFE ID (the URI
//!   SAN) is the one expected for the endpoint; a mismatch fails the handshake with
//!   [`IdentityMismatch`] naming both identities. DNS names are not checked: identity is the
//!   SPIFFE ID, as in Istio and Linkerd;
//! - servers require a client certificate from the bundle (mTLS) and expose the client's
//!   SPIFFE ID as [`PeerIdentity`](crate::identity::PeerIdentity);
//! - TLS 1.3 only by default ([`TlsSettings::min_version`] opts into 1.2); ALPN `h2` and
//!   `http/1.1`.
//!
//! **Rotation.** The three files are watched; a change is loaded and validated as a whole —
//! PEM parses, the key matches the certificate, the certificate is within its validity period and
//! carries exactly one SPIFFE ID, the bundle is not empty — and only then swapped in. New
//! handshakes use the new material; established connections are untouched. Bad material is
//! rejected with a [`TlsError`] (logged, and kept in [`TlsStore::last_error`]) and the old
//! material stays in use.
//!
//! ```no_run
//! use mesh_core::tls::{TlsFiles, TlsSettings, TlsStore};
//!
//! let store = TlsStore::load(
//!     TlsFiles::new("/var/run/secrets/mesh/cert.pem", "/var/run/secrets/mesh/key.pem", "/var/run/secrets/mesh/ca.pem"),
//!     TlsSettings::default(),
//! )?;
//! println!("I am {}", store.identity());
//! # Ok::<(), mesh_core::tls::TlsError>(())
//! ```

mod material;
mod store;
mod verify;

use std::{fmt, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

pub use self::{material::spiffe_id_of, store::TlsStore, verify::IdentityMismatch};
use crate::identity::SpiffeId;

/// ALPN protocol ids offered and accepted.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Where a workload's TLS material is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsFiles {
    /// The certificate chain (leaf first), PEM.
    pub cert_chain: PathBuf,
    /// The private key of the leaf, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The trust bundle: CA certificates peers must chain to, PEM.
    pub trust_bundle: PathBuf,
}

impl TlsFiles {
    /// The three paths.
    pub fn new(
        cert_chain: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        trust_bundle: impl Into<PathBuf>,
    ) -> Self {
        Self {
            cert_chain: cert_chain.into(),
            key: key.into(),
            trust_bundle: trust_bundle.into(),
        }
    }
}

/// Lowest TLS version negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (opt-in, for peers that cannot do 1.3).
    #[serde(rename = "TLSV1_2")]
    Tls12,
    /// TLS 1.3 only (the default; Istio's default minimum for workloads is 1.2, Linkerd's 1.3).
    #[default]
    #[serde(rename = "TLSV1_3")]
    Tls13,
}

/// When a client uses mTLS to a destination (Istio `DestinationRule.trafficPolicy.tls.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// mTLS to endpoints whose identity is known (endpoint metadata or the service's `identity`),
    /// plaintext to the others — Istio's auto mTLS, where knowing the identity stands for
    /// "has a mesh peer". The default.
    #[default]
    Auto,
    /// Always mTLS (fails for a client without a TLS identity).
    Mutual,
    /// Never TLS.
    Disable,
}

/// A client's TLS policy for one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientTlsPolicy {
    /// When to use mTLS.
    pub mode: ClientTlsMode,
    /// The identity every endpoint of the service must prove, unless the endpoint's own
    /// metadata names one. Without either, `MUTUAL` accepts any identity the bundle vouches for.
    pub identity: Option<SpiffeId>,
}

/// How a server treats incoming connections (Istio `PeerAuthentication.mtls.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// mTLS only: plaintext connections and TLS clients without a certificate from the bundle
    /// are refused. The default.
    #[default]
    Strict,
    /// mTLS and plaintext on the same port (a TLS ClientHello is recognised by its first byte);
    /// plaintext callers have no identity.
    Permissive,
    /// Plaintext only.
    Disable,
}

/// TLS settings beyond the files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSettings {
    /// Lowest version.
    pub min_version: TlsVersion,
}

/// TLS material could not be loaded or is not acceptable. The previous material (if any) stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the wanted kind.
    #[error("{}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate is expired, or not valid yet.
    #[error("certificate {} is not valid now: valid from {} to {}", path.display(), fmt_time(*not_before), fmt_time(*not_after))]
    Validity {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity.
        not_before: SystemTime,
        /// End of validity.
        not_after: SystemTime,
    },
    /// The certificate does not carry exactly one valid SPIFFE ID URI SAN.
    #[error("certificate {}: {reason}", path.display())]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn fmt_time(t: SystemTime) -> String {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("unix {}", d.as_secs()),
        Err(e) => format!("unix -{}", e.duration().as_secs()),
    }
}

/// What a workload looks like to its peers, for logs and the debug snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsStatus {
    /// The workload's SPIFFE ID.
    pub identity: SpiffeId,
    /// When the certificate expires.
    pub not_after: SystemTime,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected reloads since start (the old material stayed).
    pub rejected_reloads: u64,
    /// Handshakes made with this material, completed and failed.
    pub handshakes: HandshakeCounts,
    /// The last rejected material, if the last reload failed.
    pub last_error: Option<String>,
}

impl fmt::Display for TlsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (reloads {})", self.identity, self.reloads)
    }
}

/// Which end of a TLS connection this workload was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsSide {
    /// This workload connected (mesh client).
    Client = 0,
    /// This workload accepted (mesh server).
    Server = 1,
}

/// Why a TLS handshake failed: a bounded set, used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HandshakeFailure {
    /// The peer presented no certificate (a client without one, at a server that requires it).
    NoCertificate = 0,
    /// The peer's chain does not lead to our trust bundle.
    UnknownCa,
    /// The peer's certificate has expired or is not valid yet.
    Expired,
    /// The server proved another SPIFFE ID than the destination expects.
    IdentityMismatch,
    /// Any other certificate problem (bad signature, revoked, no SPIFFE ID, ...).
    BadCertificate,
    /// The peer aborted the handshake with an alert (usually: it refused our certificate).
    PeerAlert,
    /// A protocol error (no common version or cipher suite, bad message, ...).
    Protocol,
    /// The connection failed during the handshake (reset, EOF, the handshake timeout); a
    /// handshake abandoned because its request was cancelled is not counted.
    Io,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [HandshakeFailure; 8] = [
        Self::NoCertificate,
        Self::UnknownCa,
        Self::Expired,
        Self::IdentityMismatch,
        Self::BadCertificate,
        Self::PeerAlert,
        Self::Protocol,
        Self::Io,
    ];

    /// The label value (`unknown_ca`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::IdentityMismatch => "identity_mismatch",
            Self::BadCertificate => "bad_certificate",
            Self::PeerAlert => "peer_alert",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }

    /// Classifies the error a rustls stream returned from its handshake.
    pub fn of(error: &std::io::Error) -> Self {
        use rustls::{CertificateError as C, Error as E};
        if IdentityMismatch::find_in(error).is_some() {
            return Self::IdentityMismatch;
        }
        let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
            return Self::Io;
        };
        match tls {
            E::NoCertificatesPresented => Self::NoCertificate,
            E::InvalidCertificate(C::UnknownIssuer) => Self::UnknownCa,
            E::InvalidCertificate(C::Expired | C::NotValidYet)
            | E::InvalidCertificate(C::ExpiredContext { .. })
            | E::InvalidCertificate(C::NotValidYetContext { .. }) => Self::Expired,
            E::InvalidCertificate(_) => Self::BadCertificate,
            E::AlertReceived(_) => Self::PeerAlert,
            _ => Self::Protocol,
        }
    }
}

/// Handshake counters of one side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SideCounts {
    /// Completed handshakes.
    pub completed: u64,
    /// Failed handshakes by reason (reasons never seen are left out).
    pub failed: Vec<(HandshakeFailure, u64)>,
}

/// Handshake counters of a [`TlsStore`], per side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeCounts {
    /// As a client.
    pub client: SideCounts,
    /// As a server.
    pub server: SideCounts,
}
