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
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
