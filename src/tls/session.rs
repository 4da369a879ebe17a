//! One connection's TLS state on rustls's unbuffered API (`UnbufferedServerConnection`): received bytes in,
//! plaintext out; plaintext slices in, ciphertext out into a bounded buffer that the caller sends. Every buffer
//! is the caller's: an idle connection holds none (only a partial record, while one is arriving).
//!
//! Call order: [`TlsSession::handle_input`] with every received byte, in order; when [`TlsSession::cipher`] is
//! not empty, send it and report with [`TlsSession::sent`] before calling [`TlsSession::encrypt`] again (so the
//! buffer never holds more than one [`SEND_BUDGET`] of plaintext encrypted, plus handshake records and alerts).

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{Error, ServerConfig};

/// Most plaintext encrypted per [`TlsSession::encrypt`]: the bound of the ciphertext buffer (plus record
/// overhead, about 22 bytes per 16 KiB record).
pub const SEND_BUDGET: usize = 64 * 1024;

/// Parts shorter than this are gathered into one record with their neighbours (a record costs 22 bytes and an
/// AEAD call); longer ones are encrypted where they lie.
const SMALL: usize = 2048;

/// Most plaintext in one TLS record.
const MAX_RECORD: usize = 16 * 1024;

/// Most received bytes kept between reads: a handshake message being assembled (rustls refuses larger than
/// 64 KiB) plus one record in progress. rustls refuses larger ones itself; this is the backstop.
const MAX_PARTIAL: usize = 0xffff + MAX_RECORD + 2048 + 5;

/// One connection's TLS.
///
/// INVARIANT: `cipher_pos <= cipher.len()`; `cipher` empty ⇒ `cipher_pos == 0`.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext to send: handshake records, alerts, application data. The caller sends `cipher[cipher_pos..]`.
    pub cipher: Vec<u8>,
    pub cipher_pos: usize,
    /// Received bytes that do not complete a record yet (no allocation while empty).
    partial: Vec<u8>,
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
    pub fn new(config: &Arc<ServerConfig>) -> Result<Self, Error> {
        let conn = UnbufferedServerConnection::new(config.clone())?;
        Ok(Self {
            conn,
            cipher: Vec::new(),
            cipher_pos: 0,
            partial: Vec::new(),
            close_notify_sent: false,
            handshake_reported: false,
        })
    }

    /// Takes received bytes (decrypted in place, in `data`); appends the plaintext they carry to `plain`.
    /// On error (the peer is no TLS client, its certificate was refused, a record was bad), [`TlsSession::cipher`]
    /// holds the alert to send before closing.
    pub fn handle_input(&mut self, data: &mut [u8], plain: &mut Vec<u8>) -> Result<Progress, Error> {
        let result = if self.partial.is_empty() {
            self.process(data, plain).map(|used| {
                if used < data.len() {
                    self.partial.extend_from_slice(&data[used..]);
                }
            })
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            self.process(&mut buf, plain).map(|used| {
                if used < buf.len() {
                    buf.drain(..used);
                    self.partial = buf;
                }
            })
        };
        if let Err(e) = result {
            self.partial = Vec::new();
            return Err(e);
        }
        if self.partial.len() > MAX_PARTIAL {
            self.partial = Vec::new();
            return Err(Error::General("TLS: a record or handshake message past every limit".into()));
        }
        let mut progress = Progress::default();
        if !self.handshake_reported && !self.conn.is_handshaking() {
            self.handshake_reported = true;
            progress.handshake_done = true;
        }
        progress.wants_send = self.has_cipher();
        Ok(progress)
    }

    /// Runs the state machine over `buf`; returns how many bytes it consumed (whole records).
    fn process(&mut self, buf: &mut [u8], plain: &mut Vec<u8>) -> Result<usize, Error> {
        let mut pos = 0;
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut buf[pos..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    pos += discard;
                    // The alert rustls queued with the error comes out of the next call, before it looks at
                    // any input (over the same buffer: rustls may still point into it). Once only: a further
                    // call would read the bad bytes again.
                    let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut buf[pos..]);
                    if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
                        let _ = append(&mut self.cipher, 64, |out| data.encode(out).map_err(encode_room));
                    }
                    return Err(e);
                }
            };
            let done = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        plain.extend_from_slice(record?.payload);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    append(&mut self.cipher, 1024, |out| data.encode(out).map_err(encode_room))?;
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // Sent by the caller from `cipher`, in order, before anything encrypted later.
                    transmit.done();
                    false
                }
                ConnectionState::PeerClosed => false,
                // Needs more input, or may send (nothing more to read now), or over.
                _ => true,
            };
            pos += discard;
            if done {
                return Ok(pos);
            }
        }
    }

    /// Encodes what the state machine has queued (a key update). Over `partial`, never an empty buffer: rustls
    /// may still point into the bytes of a handshake message being assembled. (`partial` holds no complete
    /// record, so nothing is read from it here.)
    fn encode_pending(&mut self) {
        for _ in 0..16 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.partial);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if append(&mut self.cipher, 1024, |out| data.encode(out).map_err(encode_room)).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// The handshake is not complete: no application data can be sent yet.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Ciphertext still to send.
    pub fn has_cipher(&self) -> bool {
        self.cipher_pos < self.cipher.len()
    }

    /// Encrypts the start of `parts` (at most `SEND_BUDGET` bytes) into the ciphertext buffer; returns how many
    /// plaintext bytes it took. Call only with no ciphertext pending and the handshake complete.
    pub fn encrypt<'a>(&mut self, parts: impl Iterator<Item = &'a [u8]>) -> std::io::Result<usize> {
        debug_assert!(!self.has_cipher() && !self.is_handshaking());
        self.cipher.clear();
        self.cipher_pos = 0;
        let mut small = [0u8; MAX_RECORD];
        let mut small_len = 0;
        let mut total = 0;
        for part in parts {
            if total == SEND_BUDGET {
                break;
            }
            let part = &part[..part.len().min(SEND_BUDGET - total)];
            if part.len() < SMALL && small_len + part.len() <= MAX_RECORD {
                small[small_len..small_len + part.len()].copy_from_slice(part);
                small_len += part.len();
            } else {
                if small_len > 0 {
                    self.encrypt_one(&small[..small_len])?;
                    small_len = 0;
                }
                if part.len() < SMALL {
                    small[..part.len()].copy_from_slice(part);
                    small_len = part.len();
                } else {
                    self.encrypt_one(part)?;
                }
            }
            total += part.len();
        }
        if small_len > 0 {
            self.encrypt_one(&small[..small_len])?;
        }
        Ok(total)
    }

    /// Encrypts `plain` into records appended to `cipher`.
    fn encrypt_one(&mut self, plain: &[u8]) -> std::io::Result<()> {
        self.encode_pending(); // a key update first, if one is due
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.partial);
        let Ok(ConnectionState::WriteTraffic(mut traffic)) = state else {
            return Err(std::io::Error::other("TLS: cannot send application data now"));
        };
        let hint = plain.len() + plain.len().div_ceil(MAX_RECORD) * 32 + 32;
        append(&mut self.cipher, hint, |out| traffic.encrypt(plain, out).map_err(encrypt_room))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Queues close_notify, once; `true` if it was queued now.
    pub fn close_notify(&mut self) -> bool {
        if self.close_notify_sent || self.conn.is_handshaking() {
            return false;
        }
        self.close_notify_sent = true;
        self.encode_pending();
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.partial);
        let Ok(ConnectionState::WriteTraffic(mut traffic)) = state else { return false };
        if self.cipher_pos == self.cipher.len() {
            self.cipher.clear();
            self.cipher_pos = 0;
        }
        append(&mut self.cipher, 64, |out| traffic.queue_close_notify(out).map_err(encrypt_room)).is_ok()
    }

    /// `written` bytes of `cipher[cipher_pos..]` went out.
    pub fn sent(&mut self, written: usize) {
        self.cipher_pos += written;
        debug_assert!(self.cipher_pos <= self.cipher.len());
    }
}

/// Appends what `write` puts into a buffer of the room it asks for (`Err(Some(room))`), starting with `hint`.
fn append(
    cipher: &mut Vec<u8>,
    hint: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), Error> {
    let start = cipher.len();
    cipher.resize(start + hint, 0);
    loop {
        match write(&mut cipher[start..]) {
            Ok(n) => {
                cipher.truncate(start + n);
                return Ok(());
            }
            Err(Some(room)) if room > cipher.len() - start => cipher.resize(start + room, 0),
            Err(_) => {
                cipher.truncate(start);
                return Err(Error::General("TLS: cannot encode a record".into()));
            }
        }
    }
}

fn encode_room(e: EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(e) => Some(e.required_size),
        _ => None,
    }
}

fn encrypt_room(e: EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(e) => Some(e.required_size),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::io::{Read, Write};

    /// A client and a session over memory: every byte the session produces goes to the client and back.
    fn pair() -> (rustls::ClientConnection, TlsSession) {
        pair_with_alpn(vec![])
    }

    fn pair_with_alpn(alpn: Vec<Vec<u8>>) -> (rustls::ClientConnection, TlsSession) {
        pair_with(alpn, super::super::provider())
    }

    /// A pair whose client uses `provider`.
    fn pair_with(
        alpn: Vec<Vec<u8>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> (rustls::ClientConnection, TlsSession) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        // One directory per pair: the tests run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsgate-tls-session-{}-{n}", std::process::id()));
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
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = alpn;
        let client =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
        (client, TlsSession::new(&tls.config()).unwrap())
    }

    /// Runs the handshake, the client's bytes reaching the server `chunk` bytes at a time; returns what the
    /// server got as plaintext.
    fn exchange(client: &mut rustls::ClientConnection, server: &mut TlsSession, chunk: usize) -> Vec<u8> {
        let mut plain = Vec::new();
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            for b in wire.chunks_mut(chunk) {
                let _ = server.handle_input(b, &mut plain).unwrap();
            }
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
    fn key_exchange_follows_the_clients_preference() {
        use rustls::NamedGroup;
        let (mut client, mut server) = pair();
        exchange(&mut client, &mut server, 4096);
        assert_eq!(client.negotiated_key_exchange_group().map(|g| g.name()), Some(NamedGroup::X25519));

        // rustls's own `ring` defaults list P-384 first, and the server follows the client: the loadgen would make
        // every handshake a P-384 one, which browsers do not (hence our provider's order, for the loadgen).
        #[allow(deprecated)]
        let rustls_defaults = Arc::new(rustls::crypto::ring::default_provider());
        assert_eq!(rustls_defaults.kx_groups[0].name(), NamedGroup::secp384r1, "rustls's order changed");
        let (mut client, mut server) = pair_with(vec![], rustls_defaults);
        exchange(&mut client, &mut server, 4096);
        assert_eq!(client.negotiated_key_exchange_group().map(|g| g.name()), Some(NamedGroup::secp384r1));
    }

    #[test]
    fn a_handshake_then_data_both_ways_in_chunks() {
        let (mut client, mut server) = pair();
        client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let plain = exchange(&mut client, &mut server, usize::MAX);
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
    fn records_arriving_a_byte_at_a_time_and_parts_of_every_size() {
        let (mut client, mut server) = pair();
        let mut plain = exchange(&mut client, &mut server, 1);
        assert!(!server.is_handshaking());
        client.writer().write_all(b"hello").unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        for b in wire.chunks_mut(1) {
            let _ = server.handle_input(b, &mut plain).unwrap();
        }
        assert_eq!(plain, b"hello");
        // Small parts gathered, large ones encrypted where they lie, in order.
        let big: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let parts: Vec<&[u8]> = vec![b"a", b"bc", &big[..3000], b"d", &big[..], b"", b"e"];
        let want: Vec<u8> = parts.concat();
        assert_eq!(server.encrypt(parts.iter().copied()).unwrap(), want.len());
        let mut back = &server.cipher[server.cipher_pos..];
        let mut got = Vec::new();
        while !back.is_empty() {
            client.read_tls(&mut back).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut got);
        }
        assert_eq!(got, want);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
        /// Oracle: whatever the cuts between reads, the plaintext is what the client wrote.
        #[test]
        fn input_cut_anywhere_yields_the_same_plaintext(
            writes in proptest::collection::vec(1usize..40_000, 1..6),
            cuts in proptest::collection::vec(1usize..20_000, 1..40),
        ) {
            let (mut client, mut server) = pair();
            let _ = exchange(&mut client, &mut server, usize::MAX);
            let mut want = Vec::new();
            let mut wire = Vec::new();
            for (i, n) in writes.iter().enumerate() {
                let chunk: Vec<u8> = (0..*n).map(|j| (i * 7 + j) as u8).collect();
                client.writer().write_all(&chunk).unwrap();
                want.extend_from_slice(&chunk);
                while client.wants_write() {
                    client.write_tls(&mut wire).unwrap();
                }
            }
            let mut got = Vec::new();
            let (mut at, mut k) = (0, 0);
            while at < wire.len() {
                let end = (at + cuts[k % cuts.len()]).min(wire.len());
                let _ = server.handle_input(&mut wire[at..end], &mut got).unwrap();
                at = end;
                k += 1;
            }
            proptest::prop_assert_eq!(got, want);
        }

        /// A panic in rustls would take the loop thread down: whatever arrives, in whatever cuts, after (part of) a
        /// real ClientHello, or of a record after a completed handshake, or alone, input ends in plaintext or an
        /// error, and the encoding calls after it do not panic.
        #[test]
        fn arbitrary_input_never_panics(
            hello in proptest::bool::ANY,
            handshake_first in proptest::bool::ANY,
            cut_hello in 0usize..600,
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
            cuts in proptest::collection::vec(1usize..700, 1..10),
        ) {
            let (mut client, mut server) = pair();
            let mut wire = Vec::new();
            if handshake_first {
                let _ = exchange(&mut client, &mut server, usize::MAX);
                client.writer().write_all(b"GET / HTTP/1.1\r\n").unwrap();
                client.write_tls(&mut wire).unwrap();
                wire.truncate(cut_hello.min(wire.len()));
            } else if hello {
                client.write_tls(&mut wire).unwrap();
                wire.truncate(cut_hello.min(wire.len()));
            }
            wire.extend_from_slice(&junk);
            let (mut at, mut k) = (0, 0);
            while at < wire.len() {
                let end = (at + cuts[k % cuts.len()]).min(wire.len());
                if server.handle_input(&mut wire[at..end], &mut Vec::new()).is_err() {
                    break;
                }
                at = end;
                k += 1;
            }
            if !server.is_handshaking() && !server.has_cipher() {
                let _ = server.encrypt([&b"reply"[..]].into_iter());
            }
            let _ = server.close_notify();
        }
    }

    #[test]
    fn alpn_is_http_1_1_and_other_offers_are_refused() {
        let (mut client, mut server) = pair_with_alpn(vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let _ = exchange(&mut client, &mut server, usize::MAX);
        assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut client, mut server) = pair_with_alpn(vec![b"h2".to_vec()]);
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        assert!(server.handle_input(&mut wire, &mut Vec::new()).is_err(), "h2 only: no application protocol");
        assert!(server.has_cipher(), "an alert to send");
    }

    #[test]
    fn encrypt_takes_at_most_the_budget() {
        let (mut client, mut server) = pair();
        let _ = exchange(&mut client, &mut server, usize::MAX);
        let big = vec![7u8; SEND_BUDGET * 2];
        assert_eq!(server.encrypt([&big[..]].into_iter()).unwrap(), SEND_BUDGET);
        assert!(server.cipher.len() < SEND_BUDGET + 1024);
    }

    #[test]
    fn plaintext_http_is_an_error_with_an_alert() {
        let (_, mut server) = pair();
        let mut plain = Vec::new();
        assert!(server.handle_input(&mut b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), &mut plain).is_err());
        assert!(plain.is_empty());
        assert!(server.has_cipher(), "an alert to send");
    }
}
