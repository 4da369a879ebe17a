//! One connection's TLS state (rustls `ServerConnection`): received bytes in, plaintext out; plaintext slices
//! in, ciphertext out into a bounded buffer that the caller sends.
//!
//! Call order: [`TlsSession::handle_input`] with every received byte, in order; when [`TlsSession::cipher`] is
//! not empty, send it and report with [`TlsSession::sent`] before calling [`TlsSession::encrypt`] again (so the
//! buffer never holds more than one [`SEND_BUDGET`] of plaintext encrypted, plus handshake records and alerts).

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

/// Most plaintext encrypted per [`TlsSession::encrypt`]: the bound of the ciphertext buffer (plus record
/// overhead, about 22 bytes per 16 KiB record).
pub const SEND_BUDGET: usize = 64 * 1024;

/// One connection's TLS.
///
/// INVARIANT: `cipher_pos <= cipher.len()`; `cipher` empty ⇒ `cipher_pos == 0`.
pub struct TlsSession {
    conn: ServerConnection,
    /// Ciphertext to send: handshake records, alerts, application data. The caller sends `cipher[cipher_pos..]`.
    pub cipher: Vec<u8>,
    pub cipher_pos: usize,
    close_notify_sent: bool,
    handshake_reported: bool,
}

/// What some input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Progress {
    /// The handshake completed with this input.
    pub handshake_done: bool,
    /// There is ciphertext to send (handshake records, a key update, an alert).
    pub wants_send: bool,
}

impl TlsSession {
    pub fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let mut conn = ServerConnection::new(config.clone())?;
        // Our own buffer bounds what is encrypted ahead (`SEND_BUDGET`): rustls's queue is drained at once.
        conn.set_buffer_limit(None);
        Ok(Self { conn, cipher: Vec::new(), cipher_pos: 0, close_notify_sent: false, handshake_reported: false })
    }

    /// Takes received bytes; appends the plaintext they carry to `plain`. On error (the peer is no TLS client,
    /// its certificate was refused, a record was bad), [`TlsSession::cipher`] holds the alert to send before
    /// closing.
    pub fn handle_input(&mut self, mut data: &[u8], plain: &mut Vec<u8>) -> Result<Progress, rustls::Error> {
        let mut progress = Progress::default();
        while !data.is_empty() {
            match self.conn.read_tls(&mut data) {
                Ok(0) => break, // after the peer's close_notify nothing more is read
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            let result = self.conn.process_new_packets();
            self.pull_cipher();
            result?;
            // Drain the plaintext so that the next read_tls has room.
            let mut reader = self.conn.reader();
            let mut chunk = [0u8; 4096];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plain.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(rustls::Error::General(e.to_string())),
                }
            }
        }
        if !self.handshake_reported && !self.conn.is_handshaking() {
            self.handshake_reported = true;
            progress.handshake_done = true;
        }
        progress.wants_send = self.cipher_pos < self.cipher.len();
        Ok(progress)
    }

    /// The handshake is not complete: no application data can be sent yet.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Ciphertext still to send.
    pub fn has_cipher(&self) -> bool {
        self.cipher_pos < self.cipher.len()
    }

    /// Encrypts the start of `parts` (at most [`SEND_BUDGET`] bytes) into the ciphertext buffer; returns how many
    /// plaintext bytes it took. Call only with no ciphertext pending and the handshake complete.
    pub fn encrypt<'a>(&mut self, parts: impl Iterator<Item = &'a [u8]>) -> io::Result<usize> {
        debug_assert!(!self.has_cipher() && !self.is_handshaking());
        let mut slices = [IoSlice::new(&[]); 64];
        let (mut n, mut total) = (0, 0);
        for part in parts {
            if n == slices.len() || total == SEND_BUDGET {
                break;
            }
            let take = part.len().min(SEND_BUDGET - total);
            slices[n] = IoSlice::new(&part[..take]);
            n += 1;
            total += take;
        }
        let taken = self.conn.writer().write_vectored(&slices[..n])?;
        self.pull_cipher();
        Ok(taken)
    }

    /// Queues close_notify, once; `true` if it was queued now.
    pub fn close_notify(&mut self) -> bool {
        if self.close_notify_sent || self.conn.is_handshaking() {
            return false;
        }
        self.close_notify_sent = true;
        self.conn.send_close_notify();
        self.pull_cipher();
        true
    }

    /// `written` bytes of `cipher[cipher_pos..]` went out.
    pub fn sent(&mut self, written: usize) {
        self.cipher_pos += written;
        debug_assert!(self.cipher_pos <= self.cipher.len());
    }

    /// Moves what rustls has queued to send into `cipher`.
    fn pull_cipher(&mut self) {
        if self.cipher_pos == self.cipher.len() {
            self.cipher.clear();
            self.cipher_pos = 0;
        }
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.cipher).is_err() {
                break; // writing into a Vec cannot fail
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    /// A client and a session over memory: every byte the session produces goes to the client and back.
    fn pair() -> (rustls::ClientConnection, TlsSession) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("wsgate-tls-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), cert.key_pair.serialize_pem()).unwrap();
        let tls = super::super::Tls::new(super::super::TlsFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            client_ca: None,
        })
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = super::super::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
        (client, TlsSession::new(&tls.config).unwrap())
    }

    /// Runs the handshake; returns what the server got as plaintext.
    fn exchange(client: &mut rustls::ClientConnection, server: &mut TlsSession) -> Vec<u8> {
        let mut plain = Vec::new();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            let _ = server.handle_input(&wire, &mut plain).unwrap();
            let mut back = &server.cipher[server.cipher_pos..];
            let n = back.len();
            while !back.is_empty() {
                client.read_tls(&mut back).unwrap();
                client.process_new_packets().unwrap();
            }
            server.sent(n);
        }
        plain
    }

    #[test]
    fn a_handshake_then_data_both_ways_in_chunks() {
        let (mut client, mut server) = pair();
        client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let plain = exchange(&mut client, &mut server);
        assert!(!server.is_handshaking());
        assert_eq!(plain, b"GET / HTTP/1.1\r\n\r\n");
        let parts: [&[u8]; 3] = [b"abc", b"", b"defg"];
        assert_eq!(server.encrypt(parts.iter().copied()).unwrap(), 7);
        let cipher = server.cipher[server.cipher_pos..].to_vec();
        server.sent(cipher.len());
        // Delivered one byte at a time.
        for b in cipher.chunks(1) {
            client.read_tls(&mut &b[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        let mut got = [0u8; 16];
        let n = client.reader().read(&mut got).unwrap();
        assert_eq!(&got[..n], b"abcdefg");
    }

    #[test]
    fn encrypt_takes_at_most_the_budget() {
        let (mut client, mut server) = pair();
        let _ = exchange(&mut client, &mut server);
        let big = vec![7u8; SEND_BUDGET * 2];
        assert_eq!(server.encrypt([&big[..]].into_iter()).unwrap(), SEND_BUDGET);
        assert!(server.cipher.len() < SEND_BUDGET + 1024);
    }

    #[test]
    fn plaintext_http_is_an_error_with_an_alert() {
        let (_, mut server) = pair();
        let mut plain = Vec::new();
        assert!(server.handle_input(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain).is_err());
        assert!(plain.is_empty());
        assert!(server.has_cipher(), "an alert to send");
    }
}
