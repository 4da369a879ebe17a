//! Client side of the upgrade (used by the load generator): build the request, check the 101.
//!
//! The client offers no extension and at most one subprotocol ([`client_request_with`]), so a response naming an
//! extension, or a subprotocol other than the one offered, is refused.
//! Randomness is the caller's: [`generate_key`] takes the 16 nonce bytes.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{accept_key, has_token};

/// Largest response head accepted by [`parse_response`].
pub const MAX_RESPONSE_HEADER_BYTES: usize = 8192;

/// Why a server's handshake response was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed HTTP response")]
    Malformed,
    #[error("response header too large")]
    TooLarge,
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("response lacks Upgrade: websocket")]
    MissingUpgrade,
    #[error("response lacks Connection: upgrade")]
    MissingConnection,
    #[error("missing or wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("server chose a subprotocol that was not offered")]
    UnexpectedSubprotocol,
    #[error("server did not accept the offered subprotocol")]
    MissingSubprotocol,
    #[error("server chose an extension that was not offered")]
    UnexpectedExtension,
}

/// The `Sec-WebSocket-Key` for 16 random bytes supplied by the caller.
pub fn generate_key(nonce: [u8; 16]) -> String {
    BASE64.encode(nonce)
}

/// A complete upgrade request for `path` (including any query) on `host`.
pub fn client_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    client_request_with(host, path, key, None)
}

/// [`client_request`] offering one subprotocol (`Sec-WebSocket-Protocol`) when `protocol` is given.
pub fn client_request_with(host: &str, path: &str, key: &str, protocol: Option<&str>) -> Vec<u8> {
    let offer = protocol.map_or(String::new(), |p| format!("Sec-WebSocket-Protocol: {p}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    )
    .into_bytes()
}

/// Check the server's response to [`client_request`] with `key`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(consumed))`: a valid 101; bytes after `consumed`
/// are already WebSocket frames.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, HandshakeError> {
    parse_response_with(buf, key, None)
}

/// [`parse_response`] for a request that offered `protocol`: the 101 must name exactly it (RFC 6455 §4.1: the
/// client fails a connection whose server chose none it offered; a client that needs the protocol's format, as
/// the load generator does, also fails one where the server chose none at all).
pub fn parse_response_with(buf: &[u8], key: &str, protocol: Option<&str>) -> Result<Option<usize>, HandshakeError> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEADER_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEADER_BYTES => {
            return Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 || resp.version != Some(1) {
        return Err(HandshakeError::Status(code));
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut accept_ok = None::<bool>;
    let mut chosen = None::<bool>;
    let expected = accept_key(key);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("");
        let value = value.trim_matches([' ', '\t']);
        if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(Some(value), "websocket");
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection |= has_token(Some(value), "upgrade");
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            // A repeated header must not let a wrong value pass.
            accept_ok = Some(accept_ok.unwrap_or(true) && value == expected);
        } else if h.name.eq_ignore_ascii_case("sec-websocket-protocol") {
            // Exactly the offered one, once: a repeated header must not let another value pass.
            if protocol != Some(value) || chosen.is_some() {
                return Err(HandshakeError::UnexpectedSubprotocol);
            }
            chosen = Some(true);
        } else if h.name.eq_ignore_ascii_case("sec-websocket-extensions") {
            return Err(HandshakeError::UnexpectedExtension);
        }
    }
    if !upgrade {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !connection {
        return Err(HandshakeError::MissingConnection);
    }
    if accept_ok != Some(true) {
        return Err(HandshakeError::BadAccept);
    }
    if protocol.is_some() && chosen.is_none() {
        return Err(HandshakeError::MissingSubprotocol);
    }
    Ok(Some(consumed))
}
