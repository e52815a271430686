//! Certificates made in the test: a CA, and server certificates it signs for 127.0.0.1 and
//! localhost, written as PEM files the edge, the distributor and the clients read.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A certificate authority of the test's own.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as a PEM file (what clients are told to trust).
    pub pem: PathBuf,
}

/// A server certificate chain and key, as PEM files.
#[derive(Debug, Clone)]
pub struct ServerPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate (DER), to recognise which pair a server presents.
    pub der: Vec<u8>,
}

impl TestCa {
    /// Makes a CA and writes its certificate to `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("pki dir");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, "Berth test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA certificate");
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, cert.pem()).expect("write CA");
        TestCa { cert, key, pem }
    }

    /// Issues a certificate for 127.0.0.1 and localhost; writes `<dir>/<name>.crt` and
    /// `<dir>/<name>.key`.
    pub fn issue(&self, dir: &Path, name: &str) -> ServerPair {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("server certificate");
        let pair = ServerPair {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write cert");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
        pair
    }

    /// A folder holding only `ca.crt`: what skopeo's `--src-cert-dir` and podman's `--cert-dir`
    /// read.
    pub fn cert_dir(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("cert dir");
        std::fs::copy(&self.pem, dir.join("ca.crt")).expect("copy CA");
        dir.to_owned()
    }

    /// A rustls client configuration trusting only this CA, with the given ALPN protocols.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("CA into roots");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}
