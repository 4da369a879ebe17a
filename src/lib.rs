//! wsgate: a thread-per-core WebSocket gateway that fans an upstream feed out to many clients.
//!
//! Module map (dependencies point one way: `shard` → everything else):
//! - [`proto`]: RFC 6455, sans-IO — handshake, frames, masking, UTF-8, close rules.
//! - [`reactor`]: sockets and process limits; knows nothing of WebSocket.
//! - [`conn`]: per-connection state as plain data in a generational slab.
//! - [`fanout`]: the broadcast log and subscriber sets; frames are opaque bytes.
//! - [`metrics`]: Prometheus text exposition and the stats-declaring macro; knows no other module.
//! - [`upstream`]: the feed (upstream client, publisher ingest, demo), on its own thread.
//! - [`auth`]: token (JWT) validation, sans-IO: a token, the time and the key in, what its bearer may do out.
//! - [`tls`]: TLS with rustls, sans-IO: certificates (reloadable), one session per TLS connection.
//! - [`shard`]: the loop threads, wiring all of the above.

pub mod auth;
pub mod client;
pub mod config;
pub mod conn;
pub mod fanout;
pub mod handoff;
pub mod metrics;
pub mod proto;
pub mod reactor;
pub mod shard;
pub mod tls;
pub mod upstream;
