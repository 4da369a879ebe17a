//! The formats a client can receive messages in, chosen by subprotocol (`Sec-WebSocket-Protocol`).

/// Subprotocol of the envelope format.
pub const SUBPROTOCOL_JSON: &str = "wsgate.v1.json";
/// Subprotocol of the raw format.
pub const SUBPROTOCOL_RAW: &str = "wsgate.v1.raw";
/// Every subprotocol the client protocol speaks, in order of preference.
pub const SUBPROTOCOLS: [&str; 2] = [SUBPROTOCOL_JSON, SUBPROTOCOL_RAW];

/// How messages reach a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Data frames carry the upstream payload exactly (text or binary, as the feed gave it); replies and notices
    /// are JSON objects whose first key is `"wsgate"`. What a client that asks for no subprotocol gets.
    Raw,
    /// Every message is a JSON envelope: topic, position, `prev`, and the payload (`docs/client-protocol.md`).
    Json,
}

impl Format {
    /// The format for the subprotocol the handshake selected (none: raw).
    pub fn from_subprotocol(selected: Option<&str>) -> Format {
        match selected {
            Some(SUBPROTOCOL_JSON) => Format::Json,
            _ => Format::Raw,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocols_choose_the_format() {
        assert_eq!(Format::from_subprotocol(None), Format::Raw);
        assert_eq!(Format::from_subprotocol(Some(SUBPROTOCOL_RAW)), Format::Raw);
        assert_eq!(Format::from_subprotocol(Some(SUBPROTOCOL_JSON)), Format::Json);
        assert_eq!(Format::from_subprotocol(Some("chat")), Format::Raw);
    }
}
