//! WebSocket protocol core (RFC 6455), sans-IO.
//!
//! Bytes in, events and bytes out: this module owns no sockets, spawns no threads and reads no clock.
//! The caller owns every buffer and decides when to read, write, time out and free. See
//! `docs/protocol.md` for the call contract and the error → close-code table.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade (server: parse + validate + 101; client: request + 101 check).
//! - [`frame`]: frame header codec and frame encoders.
//! - [`session`]: per-connection message state machine ([`Session::handle_bytes`]).
//! - [`close`]: close-code rules and close payload codec.
//! - [`utf8`]: streaming UTF-8 validation for fragmented text.
//! - [`error`]: [`ProtocolError`], one variant per RFC rule, each with its close code.
//! - [`proxy_protocol`]: the PROXY protocol header (v1 text, v2 binary) a balancer sends before anything else.
//! - [`cidr`]: address ranges and the trusted-proxy list; [`forwarded`]: the client named by `Forwarded`,
//!   `X-Forwarded-For` or `X-Real-IP` from a trusted proxy.
//! - [`mask`]: payload (un)masking (owned separately; the only place with `unsafe`).

pub mod cidr;
pub mod close;
pub mod error;
pub mod forwarded;
pub mod frame;
pub mod handshake;
pub mod mask;
#[cfg(any(test, fuzzing))]
pub mod oracle;
pub mod proxy_protocol;
pub mod session;
pub mod utf8;

pub use close::{encode_close_frame_into, CloseCode};
pub use error::ProtocolError;
pub use frame::{encode_frame_into, encode_header, encode_masked_frame_into, FrameHeader, OpCode, MAX_HEADER_LEN};
pub use handshake::{
    accept_key, accept_upgrade, client_request, http_response, parse_request, parse_response, Accepted,
    HandshakeConfig, HandshakeError, Parsed, Rejection, RequestHead,
};
pub use session::{Event, Limits, MessageKind, Role, Session};
pub use utf8::Utf8Validator;
