//! Serving TLS from a certificate chain and key in PEM files, reloaded without a restart: a
//! rustls certificate resolver whose pair is swapped when the files change (or on demand, e.g.
//! SIGHUP). A new pair that does not load (unreadable, not PEM, key not matching the
//! certificate) is refused and the old one stays in service. Also the client side: a rustls
//! client configuration that trusts extra CAs from a PEM file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("a TLS listener needs [tls] cert and key")]
    Missing,
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate {cert} and key {key} do not form a usable pair: {message}")]
    Pair { cert: PathBuf, key: PathBuf, message: String },
}

/// The `[tls]` table shared by the edge and the distributor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM file with the server certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a change; `"0s"` reloads on SIGHUP only.
    /// Default: `"1s"`.
    #[serde(default = "default_watch")]
    pub watch: crate::HumanDuration,
}

fn default_watch() -> crate::HumanDuration {
    crate::HumanDuration::secs(1)
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsFiles { cert: cert.into(), key: key.into(), watch: default_watch() }
    }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File { path: path.to_owned(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, checking that they belong together.
pub fn load_pair(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(&files.cert)?;
    let key_err = |message: String| TlsError::File { path: files.key.clone(), message };
    let bytes = std::fs::read(&files.key).map_err(|e| key_err(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| key_err(format!("no usable private key: {e}")))?;
    let pair = |message: String| TlsError::Pair { cert: files.cert.clone(), key: files.key.clone(), message };
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| pair(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// What identifies a version of a file: a rewrite or a rename over it changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

/// The outcome of a reload attempt.
#[derive(Debug)]
pub enum Reload {
    /// The files did not change since the pair in service was loaded.
    Unchanged,
    /// A new pair is in service.
    Loaded,
    /// The files changed but do not load: the old pair stays in service.
    Refused(TlsError),
}

/// A certificate resolver serving one pair, swapped in place by [`ReloadingCert::reload`].
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file stamps of the last attempt (loaded or refused), so a bad pair is reported once.
    seen: RwLock<(Option<Stamp>, Option<Stamp>)>,
}

impl ReloadingCert {
    /// Loads the pair; an edge or distributor refuses to start when this fails.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let seen = (stamp(&files.cert), stamp(&files.key));
        let current = load_pair(&files)?;
        Ok(Arc::new(ReloadingCert { files, current: RwLock::new(current), seen: RwLock::new(seen) }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reloads when the files changed since the last attempt, or always with `force` (SIGHUP).
    pub fn reload(&self, force: bool) -> Reload {
        let now = (stamp(&self.files.cert), stamp(&self.files.key));
        let unchanged = self.seen.read().map(|seen| *seen == now).unwrap_or(false);
        if unchanged && !force {
            return Reload::Unchanged;
        }
        if let Ok(mut seen) = self.seen.write() {
            *seen = now;
        }
        match load_pair(&self.files) {
            Ok(pair) => {
                if let Ok(mut current) = self.current.write() {
                    *current = pair;
                }
                Reload::Loaded
            }
            Err(e) => Reload::Refused(e),
        }
    }

    /// The end-entity certificate in service (DER).
    pub fn current_cert(&self) -> Option<CertificateDer<'static>> {
        self.current.read().ok().and_then(|c| c.cert.first().cloned())
    }

    /// When the certificate in service expires (its `notAfter`), in Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        self.current_cert().and_then(|der| crate::x509::not_after(&der))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// A rustls server configuration serving `cert` with the given ALPN protocols.
pub fn server_config(cert: Arc<ReloadingCert>, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
    let files = cert.files.clone();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Pair { cert: files.cert, key: files.key, message: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Root certificates: the public web roots plus every certificate in `ca_file`.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: path.to_owned(),
                message: format!("unusable CA certificate: {e}"),
            })?;
        }
    }
    Ok(roots)
}

/// A rustls client configuration trusting the public web roots plus `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let roots = root_store(ca_file)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::File { path: ca_file.map(Path::to_owned).unwrap_or_default(), message: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let files = TlsFiles::new(dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(dir.path(), "a"), pair(dir.path(), "b"));
        assert!(load_pair(&a).is_ok());
        let mixed = TlsFiles::new(&a.cert, &b.key);
        assert!(matches!(load_pair(&mixed), Err(TlsError::Pair { .. })), "{:?}", load_pair(&mixed));
    }

    #[test]
    fn unreadable_or_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a");
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        let err = load_pair(&TlsFiles::new(dir.path().join("empty.crt"), &a.key)).unwrap_err().to_string();
        assert!(err.contains("empty.crt") && err.contains("no certificate"), "{err}");
        let err = load_pair(&TlsFiles::new(&a.cert, dir.path().join("missing.key"))).unwrap_err().to_string();
        assert!(err.contains("missing.key"), "{err}");
        let err = load_pair(&TlsFiles::new(&a.cert, &a.cert)).unwrap_err().to_string();
        assert!(err.contains("no usable private key"), "{err}");
    }

    #[test]
    fn a_changed_pair_is_swapped_in_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (pair(dir.path(), "a"), pair(dir.path(), "b"));
        let served = TlsFiles::new(dir.path().join("s.crt"), dir.path().join("s.key"));
        std::fs::copy(&a.cert, &served.cert).unwrap();
        std::fs::copy(&a.key, &served.key).unwrap();
        let cert = ReloadingCert::load(served.clone()).unwrap();
        let first = cert.current_cert().unwrap();
        assert!(matches!(cert.reload(false), Reload::Unchanged));
        std::fs::copy(&b.cert, &served.cert).unwrap();
        assert!(matches!(cert.reload(false), Reload::Refused(_)), "b's cert with a's key");
        assert_eq!(cert.current_cert().unwrap(), first, "the old pair stays in service");
        assert!(matches!(cert.reload(false), Reload::Unchanged), "a refused pair is reported once");
        std::fs::copy(&b.key, &served.key).unwrap();
        assert!(matches!(cert.reload(false), Reload::Loaded));
        assert_ne!(cert.current_cert().unwrap(), first);
    }
}
