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
/// Key exchange groups: X25519, P-256, P-384. A rustls server follows the client's order (the first group of the
/// client's list that it supports, asked for by HelloRetryRequest when the client sent no key share for it), so
/// for the gateway this list says only which groups it accepts. The order matters to the loadgen, which uses this
/// provider as a client: rustls 0.23.48 lists `ring`'s groups P-384 first, and `ring` computes P-384 with generic
/// big-number code, several times the CPU of X25519 per handshake on both sides (`docs/benchmarks.md`,
/// "Handshakes per second"). X25519 first is what browsers and OpenSSL do. P-256 is the group RFC 8446 makes
/// mandatory; P-384 stays for clients that prefer it (a rustls client on `ring`'s own defaults does).
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{default_provider, kx_group};
    let kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    std::sync::Arc::new(rustls::crypto::CryptoProvider { kx_groups, ..default_provider() })
}
