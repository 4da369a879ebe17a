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

/// The listener's TLS: the `ServerConfig` new connections take, swapped whole by a reload.
pub struct Tls {
    /// Shared by every connection of every loop thread: one read lock and one `Arc` clone per connection, at its
    /// first input. A session keeps the configuration it started with, so a reload never touches open ones.
    current: RwLock<Arc<ServerConfig>>,
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
        let config = build(&files, &provider)?;
        Ok(Self { current: RwLock::new(Arc::new(config)), files, provider })
    }

    /// The configuration a new connection's session starts with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the certificate, the key and the client CA file again and builds a new configuration: new
    /// handshakes get the new certificate and are checked against the new client CAs; connections already open
    /// keep their session. On any error nothing changes, and the error says why.
    pub fn reload(&self) -> Result<(), String> {
        let config = build(&self.files, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Everything the files name, read now: the server certificate, its key, and the client CAs when set.
fn build(files: &TlsFiles, provider: &Arc<CryptoProvider>) -> Result<ServerConfig, String> {
    let key = Arc::new(load(&files.cert, &files.key, provider)?);
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
    let mut config = builder.with_cert_resolver(Arc::new(OneCert(key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Each connection's session is kept as long as the connection; resumption costs a cache the loops
    // would have to share: off (a reconnecting client makes a full handshake).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The one certificate every handshake of a configuration gets.
#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
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
        assert_eq!(tls.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
        let (cert2, key2) = self_signed("other");
        write(&d, "c.pem", &cert2);
        write(&d, "k.pem", &key2);
        tls.reload().unwrap();
        write(&d, "k.pem", "garbage");
        assert!(tls.reload().unwrap_err().starts_with("tls_key:"), "a bad new key is refused");
    }

    #[test]
    fn a_bad_client_ca_file_on_reload_keeps_the_last_configuration() {
        let d = dir("ca");
        let (cert, key) = self_signed("localhost");
        let (ca, _) = self_signed("a client CA");
        let client_ca = write(&d, "ca.pem", &ca);
        let files =
            TlsFiles { cert: write(&d, "c.pem", &cert), key: write(&d, "k.pem", &key), client_ca: Some(client_ca) };
        let tls = Tls::new(files).unwrap();
        let before = tls.config();
        write(&d, "ca.pem", "");
        assert!(tls.reload().unwrap_err().starts_with("tls_client_ca:"), "an empty CA file is refused");
        assert!(Arc::ptr_eq(&before, &tls.config()), "the configuration stays");
        write(&d, "ca.pem", &ca);
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.config()), "a good reload swaps the configuration");
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
