//! The current TLS material of a workload, reloaded when its files change.

use std::{
    fmt,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use arc_swap::ArcSwap;
use notify::RecommendedWatcher;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use super::{HandshakeCounts, HandshakeFailure, SideCounts, TlsSide};
use super::{
    TlsError, TlsFiles, TlsSettings, TlsStatus, TlsVersion,
    material::{self, Live},
    verify::{CurrentCert, RotatingClientVerifier, SpiffeServerVerifier},
};
use crate::identity::SpiffeId;

/// A workload's TLS material, current and watched. Cheap to clone. See the
/// [module docs](super).
#[derive(Clone)]
pub struct TlsStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    files: TlsFiles,
    /// What the verifiers read at each handshake.
    live: Arc<Live>,
    versions: &'static [&'static SupportedProtocolVersion],
    last_error: Mutex<Option<TlsError>>,
    reloads: AtomicU64,
    rejected_reloads: AtomicU64,
    /// Completed handshakes, by side (client, server).
    handshakes: [AtomicU64; 2],
    /// Failed handshakes, by side and [`HandshakeFailure`].
    handshake_failures: [[AtomicU64; HandshakeFailure::ALL.len()]; 2],
    watcher: Mutex<Option<RecommendedWatcher>>,
}

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl TlsStore {
    /// Loads and validates the material, then watches its files for rotation.
    pub fn load(files: TlsFiles, settings: TlsSettings) -> Result<Self, TlsError> {
        let store = Self::load_unwatched(files, settings)?;
        let weak: Weak<Inner> = Arc::downgrade(&store.inner);
        let paths = [
            store.inner.files.cert_chain.as_path(),
            store.inner.files.key.as_path(),
            store.inner.files.trust_bundle.as_path(),
        ];
        match crate::fs_watch::watch_files(&paths, "mesh-tls-watch", move || {
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            let _ = TlsStore { inner }.reload();
            true
        }) {
            Ok(w) => {
                *store
                    .inner
                    .watcher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(w)
            }
            Err(e) => tracing::error!(error = %e,
                "cannot watch TLS files; rotation will need TlsStore::reload"),
        }
        Ok(store)
    }

    /// Loads the material without watching the files (rotate with [`reload`](Self::reload)).
    pub fn load_unwatched(files: TlsFiles, settings: TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let material = material::load(&files, &provider)?;
        tracing::info!(identity = %material.identity, cert = %files.cert_chain.display(), "TLS identity loaded");
        let store = Self {
            inner: Arc::new(Inner {
                files,
                live: Arc::new(Live {
                    current: ArcSwap::from_pointee(material),
                    provider,
                }),
                versions: match settings.min_version {
                    TlsVersion::Tls13 => TLS13_ONLY,
                    TlsVersion::Tls12 => TLS12_AND_13,
                },
                last_error: Mutex::new(None),
                reloads: AtomicU64::new(0),
                rejected_reloads: AtomicU64::new(0),
                handshakes: Default::default(),
                handshake_failures: Default::default(),
                watcher: Mutex::new(None),
            }),
        };
        // The provider and protocol versions are fixed from here on: if rustls accepts them
        // for both sides now, every later `client_config` / `server_config` builds.
        store.client_config(None, &[])?;
        store.server_config(&[])?;
        Ok(store)
    }

    /// Re-reads the files now. On error the current material stays and the error is returned,
    /// logged, and kept in [`last_error`](Self::last_error).
    pub fn reload(&self) -> Result<(), TlsError> {
        match material::load(&self.inner.files, &self.inner.live.provider) {
            Ok(m) => {
                let old = self.inner.live.current.load().identity.clone();
                tracing::info!(identity = %m.identity, previous = %old, "TLS material rotated");
                self.inner.live.current.store(Arc::new(m));
                self.inner.reloads.fetch_add(1, Relaxed);
                *self
                    .inner
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS material rejected; keeping the current one");
                self.inner.rejected_reloads.fetch_add(1, Relaxed);
                *self
                    .inner
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Whether `other` is a clone of this store.
    pub fn same(&self, other: &TlsStore) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// This workload's SPIFFE ID.
    pub fn identity(&self) -> SpiffeId {
        self.inner.live.current.load().identity.clone()
    }

    /// The error of the last reload, if it failed.
    pub fn last_error(&self) -> Option<TlsError> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Successful reloads since load.
    pub fn reloads(&self) -> u64 {
        self.inner.reloads.load(Relaxed)
    }

    /// Rejected reloads (bad new material; the old stayed) since load.
    pub fn rejected_reloads(&self) -> u64 {
        self.inner.rejected_reloads.load(Relaxed)
    }

    /// TLS handshakes completed with configurations of this store (client and server sides).
    pub fn handshakes(&self) -> u64 {
        self.inner.handshakes.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Counts a completed handshake (called by the protocol crates' connectors and acceptors).
    pub fn count_handshake(&self, side: TlsSide) {
        self.inner.handshakes[side as usize].fetch_add(1, Relaxed);
    }

    /// Counts a failed handshake, classified from the error the TLS stream returned (called by
    /// the protocol crates' connectors and acceptors).
    pub fn count_handshake_failure(
        &self,
        side: TlsSide,
        error: &std::io::Error,
    ) -> HandshakeFailure {
        let reason = HandshakeFailure::of(error);
        self.inner.handshake_failures[side as usize][reason as usize].fetch_add(1, Relaxed);
        reason
    }

    /// Handshake counters: completed and failed by reason, per side.
    pub fn handshake_counts(&self) -> HandshakeCounts {
        let side = |i: usize| SideCounts {
            completed: self.inner.handshakes[i].load(Relaxed),
            failed: HandshakeFailure::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        self.inner.handshake_failures[i][*r as usize].load(Relaxed),
                    )
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        };
        HandshakeCounts {
            client: side(TlsSide::Client as usize),
            server: side(TlsSide::Server as usize),
        }
    }

    /// Identity, expiry and reload state.
    pub fn status(&self) -> TlsStatus {
        let m = self.inner.live.current.load();
        TlsStatus {
            identity: m.identity.clone(),
            not_after: m.not_after,
            reloads: self.reloads(),
            rejected_reloads: self.rejected_reloads(),
            handshakes: self.handshake_counts(),
            last_error: self.last_error().map(|e| e.to_string()),
        }
    }

    /// A client configuration presenting this workload's certificate and accepting only a server
    /// that chains to the bundle and, when `expected` is given, proves that SPIFFE ID.
    pub fn client_config(
        &self,
        expected: Option<SpiffeId>,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(SpiffeServerVerifier::new(self.inner.live.clone(), expected));
        let mut config = ClientConfig::builder_with_provider(self.inner.live.provider.clone())
            .with_protocol_versions(self.inner.versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(CurrentCert(self.inner.live.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A server configuration presenting this workload's certificate and requiring a client
    /// certificate that chains to the bundle.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.inner.live.provider.clone())
            .with_protocol_versions(self.inner.versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(RotatingClientVerifier(self.inner.live.clone())))
            .with_cert_resolver(Arc::new(CurrentCert(self.inner.live.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl fmt::Debug for TlsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStore")
            .field("identity", &self.identity())
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}
