//! TLS for the listener, with rustls (the `ring` provider). Sans-IO: bytes in, bytes out.
//!
//! - `certs`: the certificate and key from their PEM files, the server configuration built once at start
//!   (ALPN `http/1.1`, optional client-certificate auth), and the certificate store that SIGHUP reloads.
//! - `session`: one connection's TLS state on rustls's unbuffered API: received bytes in (decrypted in the
//!   caller's buffer), plaintext out; plaintext slices in, ciphertext into a bounded buffer out. No buffers held idle.
//!
//! It does not touch sockets, the loop or the clock: `shard::transport` feeds it what the reactor received and
//! hands the reactor what it produced.

mod certs;
mod session;

pub use certs::{Tls, TlsFiles};
pub use session::{Progress, TlsSession};

/// The crypto provider: rustls on `ring`. rustls 0.23.48 marks it deprecated because `ring` has no post-quantum
/// key exchange; the `aws-lc-rs` provider has one but builds a large C library (cmake), which this project keeps
/// out of its build. Swapping providers changes only this function.
///
/// Key exchange preference: X25519, then P-256, then P-384. rustls 0.23.48 lists `ring`'s groups P-384 first, and
/// `ring` computes P-384 with generic big-number code: several times the CPU of X25519 per handshake
/// (`docs/benchmarks.md`, "Handshakes per second"). A client sends a key share for its first group only, and the
/// server takes a share it supports rather than ask for another (a round trip more); so this order is what makes
/// the loadgen (which uses this provider) agree on X25519 with the gateway. Browsers and OpenSSL offer X25519
/// first anyway; a rustls client on `ring`'s defaults still gets P-384. P-256 is the group RFC 8446 makes
/// mandatory; P-384 stays for clients that offer nothing else.
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    let kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    std::sync::Arc::new(rustls::crypto::CryptoProvider { kx_groups, ..default_provider() })
}
