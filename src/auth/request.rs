//! Where a request carries its token: `Authorization: Bearer TOKEN` (RFC 6750 §2.1), for clients that can set
//! headers, or the `token=` query parameter (§2.3's idea under a shorter name), for those that cannot (a
//! browser's `WebSocket` and `EventSource`). One request, one token: both at once is refused (§2).

use std::borrow::Cow;

use super::AuthError;
use crate::client::query;

/// The query parameter that carries a token.
pub const TOKEN_PARAM: &str = "token";

/// The token of a request: from its `Authorization` headers (only `Bearer` ones count; other schemes are not
/// ours) or its target's `token=` parameter. `Ok(None)`: it has none.
pub fn token_from_request<'a>(
    target: &'a str,
    authorization: impl Iterator<Item = &'a str>,
) -> Result<Option<Cow<'a, str>>, AuthError> {
    let mut bearer = None;
    for value in authorization {
        let value = value.trim();
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            continue;
        }
        if bearer.is_some() {
            return Err(AuthError::Ambiguous);
        }
        bearer = Some(token.trim());
    }
    let param = match query::param(target, TOKEN_PARAM) {
        None => None,
        Some(Ok(token)) => Some(token),
        Some(Err(())) => return Err(AuthError::Malformed),
    };
    match (bearer, param) {
        (Some(_), Some(_)) => Err(AuthError::Ambiguous),
        (Some(""), None) => Err(AuthError::Malformed),
        (Some(token), None) => Ok(Some(Cow::Borrowed(token))),
        (None, Some(token)) if token.is_empty() => Err(AuthError::Malformed),
        (None, token) => Ok(token),
    }
}
