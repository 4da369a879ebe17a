//! TLS for the tests: a throw-away CA and certificates made with rcgen at test time, and an independent rustls
//! client (tungstenite over a rustls stream for wss://; plain HTTP over it for https://). Included by the TLS
//! test binaries with `#[path]`, not by `common`: the others need none of it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::common::{unique_temp_path, IO_TIMEOUT};

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A test CA and what it signed, with the PEM files the gateway reads.
pub struct Pki {
    pub ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// `tls_cert` and `tls_key` of the gateway (for `localhost` and `127.0.0.1`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA as PEM (for `tls_client_ca`, or a Python client's trust).
    pub ca_file: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "wsgate test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = unique_temp_path("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let mut pki =
            Pki { ca, ca_key, cert_file: unique_temp_path("cert.pem"), key_file: unique_temp_path("key.pem"), ca_file };
        pki.write_server_cert("localhost");
        pki
    }

    /// (Re)writes the gateway's certificate and key files: a new key, signed by the CA, with `cn` as its
    /// common name.
    pub fn write_server_cert(&mut self, cn: &str) {
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(&self.cert_file, cert.pem()).unwrap();
        std::fs::write(&self.key_file, key.serialize_pem()).unwrap();
    }

    /// A client certificate signed by this CA.
    pub fn client_identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec!["client".into()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (vec![cert.der().clone()], PrivateKeyDer::try_from(key.serialize_der()).unwrap())
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert_file.to_str().unwrap().into(),
            "--tls-key".into(),
            self.key_file.to_str().unwrap().into(),
        ]
    }

    /// A client that trusts this CA (and presents `identity`, when given).
    pub fn client(
        &self,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        client_config(roots, identity)
    }
}

/// A client that trusts only `roots`, offering ALPN `http/1.1`.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[allow(deprecated)] // the `ring` provider, as the gateway's (see `wsgate::tls::provider`)
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// A TCP connection to `addr` wrapped in a TLS client for `localhost`; the handshake runs at the first I/O.
pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> TlsStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

/// Completes the handshake now; the error says why it failed.
pub fn handshake(stream: &mut TlsStream) -> std::io::Result<()> {
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(())
}

/// One HTTP/1.1 request over TLS; the whole response, read to the end (which needs the server's close_notify:
/// a TLS stream cut without it is an error here).
pub fn https_get(addr: SocketAddr, config: &Arc<ClientConfig>, path: &str) -> std::io::Result<String> {
    let mut s = connect(addr, config);
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A WebSocket client over TLS (`wss://localhost:PORT/ws`).
pub fn wss_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> tungstenite::WebSocket<TlsStream> {
    wss_connect_to(addr, config, "/ws")
}

/// A WebSocket client over TLS on `target` (a path and query).
pub fn wss_connect_to(addr: SocketAddr, config: &Arc<ClientConfig>, target: &str) -> tungstenite::WebSocket<TlsStream> {
    let stream = connect(addr, config);
    let url = format!("wss://localhost:{}{target}", addr.port());
    let (ws, resp) = tungstenite::client(url.as_str(), stream).unwrap_or_else(|e| panic!("wss handshake: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}
