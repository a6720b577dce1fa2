//! The serving certificate: loaded from PEM files, served through an `ArcSwap`-backed
//! [`ResolvesServerCert`], and reloaded without a restart when the files change (a file watch on
//! their directories, which also sees Kubernetes' `..data` symlink swap, plus a periodic check as a
//! fallback). A bad new pair is logged and counted; the last good one stays in service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate file {0} holds no certificate")]
    NoCert(PathBuf),
    #[error("reading private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate {cert} and key {key} do not make a usable pair: {source}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a certificate chain and its key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<(CertifiedKey, Vec<u8>), TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::Cert {
        path: cert.to_path_buf(),
        source: rustls::pki_types::pem::Error::Io(e),
    })?;
    let key_pem = std::fs::read(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        source: rustls::pki_types::pem::Error::Io(e),
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Cert {
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_path_buf()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let ck =
        CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    let mut fingerprint = cert_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok((ck, fingerprint))
}

/// The current certificate, swappable while connections are served.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes when last loaded: a reload that finds the same bytes does nothing.
    fingerprint: ArcSwap<Vec<u8>>,
}

impl CertStore {
    /// Loads the pair; fails when it is not usable (the server must not start without it).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (ck, fp) = load_pair(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: ArcSwap::from_pointee(ck),
            fingerprint: ArcSwap::from_pointee(fp),
        }))
    }

    /// Rereads the files. `Ok(true)` when a new pair went into service.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (ck, fp) = load_pair(&self.cert_path, &self.key_path)?;
        if **self.fingerprint.load() == fp {
            return Ok(false);
        }
        self.current.store(Arc::new(ck));
        self.fingerprint.store(Arc::new(fp));
        Ok(true)
    }

    /// A rustls server configuration that serves whatever pair is current: TLS 1.2 and 1.3,
    /// HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(Arc::clone(self))));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Watches the files and reloads on change, and every `interval` regardless. Runs until the
    /// task is dropped.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: Metrics,
    ) -> Result<(), TlsError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| TlsError::Watch {
            path: self.cert_path.clone(),
            source,
        })?;
        let mut dirs: Vec<PathBuf> = [&self.cert_path, &self.key_path]
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.dedup();
        for d in &dirs {
            watcher
                .watch(d, RecursiveMode::NonRecursive)
                .map_err(|source| TlsError::Watch {
                    path: d.clone(),
                    source,
                })?;
        }
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                got = rx.recv() => {
                    if got.is_none() { return Ok(()); }
                    // Let a writer finish both files (and kubelet its symlink swap).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
            match self.reload() {
                Ok(true) => {
                    metrics.tls_reload("ok");
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.tls_reload("error");
                    tracing::error!(error = %e, "serving certificate not reloaded; keeping the previous one");
                }
            }
        }
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current.load_full())
    }
}
