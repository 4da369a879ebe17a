//! wsgate: a thread-per-core WebSocket gateway that fans an upstream feed out to many clients.

pub mod proto;
pub mod upstream;
