//! `wss://`: the client side of TLS, with rustls over the worker's non-blocking mio streams.
//!
//! - [`Client`]: the configuration built once per process from `--tls-ca` (the only trusted root; no system
//!   store) and the URL's host as the server name.
//! - [`read_plaintext`] and [`flush`]: move bytes between one `ClientConnection` and its socket. Plaintext goes
//!   in and comes out of the same buffers as on a plain connection (`Conn::out`, the worker's read buffer), so
//!   the WebSocket code above does not know TLS is there.
//!
//! A certificate of `--tls-ca` that the server presents as its own is trusted as is (pinned): `openssl req -x509`
//! makes self-signed certificates with `CA:TRUE`, which WebPKI refuses as a server certificate. Any other
//! certificate must chain to one of them and name the host.
//!
//! It does not do session resumption: every connection makes a full handshake, like distinct real clients.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// What every `wss://` connection of a process shares.
pub struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Client {
    /// Trusts the certificates of the PEM file `ca` (a CA, or the server's self-signed certificate) for `host`.
    pub fn new(ca: &Path, host: &str) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
        if added == 0 {
            return Err(format!("--tls-ca {}: no usable certificate", ca.display()));
        }
        let provider = wsgate::tls::provider();
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("--tls-ca {}: {e}", ca.display()))?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { pinned: certs, webpki }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(host.to_string()).map_err(|e| format!("tls server name {host:?}: {e}"))?;
        Ok(Client { config: Arc::new(config), name })
    }

    /// A new connection's TLS session; its ClientHello goes out with the first [`flush`].
    pub fn session(&self) -> io::Result<Box<ClientConnection>> {
        ClientConnection::new(self.config.clone(), self.name.clone()).map(Box::new).map_err(io::Error::other)
    }
}

/// WebPKI, except that a `--tls-ca` certificate presented as the server's own is accepted as is.
#[derive(Debug)]
struct Verifier {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Reads decrypted bytes into `buf`, reading and decrypting from the socket as needed. `Ok(0)`: the stream
/// ended; `WouldBlock`: the socket is drained. A TLS error comes back as `InvalidData` wrapping the
/// `rustls::Error` (its alert, if any, goes out with the next [`flush`]).
pub fn read_plaintext(tls: &mut ClientConnection, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Ok(0): close_notify; UnexpectedEof: the socket ended without one.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            other => return other,
        }
        if tls.read_tls(stream)? == 0 {
            return Ok(0);
        }
        tls.process_new_packets().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
}

/// Hands `out` (plaintext) to rustls as far as it takes it (before the handshake completes it holds it, then
/// sends it), and writes the TLS records it has to the socket until the socket blocks.
pub fn flush(tls: &mut ClientConnection, stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    loop {
        if !out.is_empty() {
            let n = tls.writer().write(out)?;
            out.drain(..n);
        }
        if !tls.wants_write() {
            return Ok(());
        }
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::path::PathBuf;

    use super::*;

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wsgate-loadgen-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A one-connection TLS echo server on a thread: echoes what it reads until the client closes.
    fn echo_server(cert: &rcgen::CertifiedKey) -> std::net::SocketAddr {
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(wsgate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, sock);
            let mut buf = [0u8; 1024];
            while let Ok(n @ 1..) = tls.read(&mut buf) {
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
        });
        addr
    }

    /// Flushes `out` and reads until `want` bytes of plaintext came back (or an error).
    fn round_trip(client: &Client, addr: std::net::SocketAddr, want: usize) -> io::Result<Vec<u8>> {
        let std_stream = std::net::TcpStream::connect(addr)?;
        std_stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std_stream);
        let mut tls = client.session()?;
        let mut out = b"GET /ws HTTP/1.1\r\n\r\n".to_vec();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < want && std::time::Instant::now() < deadline {
            flush(&mut tls, &mut stream, &mut out)?;
            match read_plaintext(&mut tls, &mut stream, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => {
                    let _ = flush(&mut tls, &mut stream, &mut out); // the alert
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    #[test]
    fn request_written_before_the_handshake_goes_through_and_comes_back() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let addr = echo_server(&cert);
        let client = Client::new(&write_temp("ok.pem", &cert.cert.pem()), "localhost").unwrap();
        let want = b"GET /ws HTTP/1.1\r\n\r\n";
        assert_eq!(round_trip(&client, addr, want.len()).unwrap(), want);
    }

    #[test]
    fn an_untrusted_certificate_fails_with_a_tls_reason() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let addr = echo_server(&cert);
        let client = Client::new(&write_temp("other.pem", &other.cert.pem()), "localhost").unwrap();
        let e = round_trip(&client, addr, 1).unwrap_err();
        assert!(crate::addrs::error_reason(&e).starts_with("tls: "), "{e}");
    }

    #[test]
    fn bad_ca_files_are_refused() {
        assert!(Client::new(Path::new("/nonexistent/ca.pem"), "localhost").is_err());
        assert!(Client::new(&write_temp("empty.pem", ""), "localhost").is_err());
    }
}
