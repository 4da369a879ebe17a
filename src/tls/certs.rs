//! Certificates and the server configuration: read from PEM files at start, reloaded on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where the TLS material lives (`tls_cert`, `tls_key`, `tls_client_ca`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The listener's TLS: one `ServerConfig` for the life of the process, whose certificate can be swapped.
pub struct Tls {
    /// Shared by every connection of every loop thread (one `Arc` clone per connection, at its first input).
    pub config: Arc<ServerConfig>,
    certs: Arc<CertStore>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files and builds the configuration. The error names the setting at fault.
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let provider = super::provider();
        let key = load(&files.cert, &files.key, &provider)?;
        let certs = Arc::new(CertStore { current: RwLock::new(Arc::new(key)) });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("tls_client_ca", path)? {
                    roots.add(cert).map_err(|e| format!("tls_client_ca: {}: {e}", path.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("tls_client_ca: {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Each connection's session is kept as long as the connection; resumption costs a cache the loops
        // would have to share: off (a reconnecting client makes a full handshake).
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self { config: Arc::new(config), certs, files, provider })
    }

    /// Reads the certificate and key files again: new connections get the new certificate, connections already
    /// open keep their session. On error the old certificate stays, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let key = load(&self.files.cert, &self.files.key, &self.provider)?;
        *self.certs.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// The certificate new handshakes get: read once per handshake (a read lock and an `Arc` clone), swapped by
/// [`Tls::reload`].
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The chain of `cert` with the key of `key`, checked to belong together.
fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = read_certs("tls_cert", cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key: {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| format!("tls_key: {} with tls_cert: {e}", key.display()))
}

/// Every certificate of a PEM file; at least one.
fn read_certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{setting}: {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wsgate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn self_signed(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (cert.cert.pem(), cert.key_pair.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_reloads() {
        let d = dir("ok");
        let (cert, key) = self_signed("localhost");
        let files = TlsFiles { cert: write(&d, "c.pem", &cert), key: write(&d, "k.pem", &key), client_ca: None };
        let tls = Tls::new(files.clone()).unwrap();
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let (cert2, key2) = self_signed("other");
        write(&d, "c.pem", &cert2);
        write(&d, "k.pem", &key2);
        tls.reload().unwrap();
        write(&d, "k.pem", "garbage");
        assert!(tls.reload().unwrap_err().starts_with("tls_key:"), "a bad new key is refused");
    }

    #[test]
    fn errors_name_the_setting() {
        let d = dir("bad");
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("x");
        let good_cert = write(&d, "c.pem", &cert);
        let good_key = write(&d, "k.pem", &key);
        let new = |cert: &PathBuf, key: &PathBuf| {
            Tls::new(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: None }).unwrap_err()
        };
        assert!(new(&d.join("missing.pem"), &good_key).starts_with("tls_cert:"));
        assert!(new(&write(&d, "empty.pem", ""), &good_key).starts_with("tls_cert:"));
        assert!(new(&good_cert, &d.join("missing.pem")).starts_with("tls_key:"));
        assert!(new(&good_cert, &write(&d, "other.pem", &other_key)).starts_with("tls_key:"), "key of another cert");
    }
}
