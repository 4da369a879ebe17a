//! Token authentication, sans-IO: a JSON Web Token (RFC 7519) in, what its bearer may do out.
//!
//! [`validate`] is a pure function of the token's text, the wall-clock time (passed in) and an [`AuthConfig`]:
//! it checks the signature with the configured key (`jsonwebtoken`, pure-Rust RustCrypto backend), the
//! algorithm against the allowed list, `exp` and `nbf` (with the configured leeway), `aud` and `iss`, and reads
//! the two claims that list what the bearer may subscribe to and publish on ([`Grant`]).
//!
//! Decisions (`docs/client-protocol.md`, "Authentication"):
//! - The key fixes the algorithm family: an HMAC secret verifies only `HS*`, an RSA public key only `RS*`/`PS*`,
//!   an EC public key only `ES*`. So a token signed with HMAC using the RSA public key's bytes as its secret (the
//!   classic HS/RS confusion) is refused before any signature is computed: `HS256` is not an allowed algorithm
//!   of an RSA key. `none` is never an algorithm (`jsonwebtoken` has no such variant, and the header's `alg` is
//!   checked against the allowed list first).
//! - `exp` is required; a token is valid while `now < exp + leeway` and, with `nbf`, from `nbf - leeway` on.
//! - With `auth_audience` set, `aud` is required and must name one of them; without it, a token that carries an
//!   `aud` is refused (RFC 7519 §4.1.3: a principal not named in `aud` must reject the token).
//! - The topics claim (default `topics`) and the publish claim (default `publish`) are arrays of topics and prefix
//!   patterns (`BTC-*`, `*`), in the syntax of subscriptions. A claim that is absent grants nothing.
//!
//! What this module does not do: read files or sockets, look at the clock, or decide what a refusal looks like on
//! the wire (the loop thread's `shard::access` does). [`AuthError`] names a reason category for logs and
//! counters; nothing here ever formats the token itself.

mod keys;
mod request;
#[cfg(test)]
mod tests;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::client::Pattern;

pub use keys::KeyMaterial;
pub use request::{token_from_request, TOKEN_PARAM};

/// How tokens are checked, resolved once at start ([`AuthConfig::new`]).
pub struct AuthConfig {
    key: DecodingKey,
    /// The algorithms accepted, all of the key's family.
    algorithms: Vec<Algorithm>,
    /// `aud`, `iss` and the signature; `exp` and `nbf` are checked here against the `now` passed in.
    validation: Validation,
    leeway: Duration,
    /// A request without a token is let in, with what the gateway offers everyone (no publishing).
    pub optional: bool,
    topics_claim: String,
    publish_claim: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of every log line.
        f.debug_struct("AuthConfig")
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

/// The settings of [`AuthConfig`] besides its key (see `Config`'s `auth_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOptions {
    /// Algorithm names (`HS256`, `RS256`, `ES256`, ...); empty: the key family's usual one.
    pub algorithms: Vec<String>,
    /// Accepted `aud` values; empty: tokens must carry no `aud`.
    pub audience: Vec<String>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub optional: bool,
    pub topics_claim: String,
    pub publish_claim: String,
}

/// What a valid token allows its bearer, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's `exp` (seconds since the Unix epoch).
    pub exp: u64,
    /// The end of its validity: `exp` plus the leeway, since the Unix epoch.
    pub valid_until: Duration,
    /// `sub`, if the token has one (a refresh must keep it).
    pub subject: Option<Box<str>>,
    /// Topics and patterns the bearer may subscribe to (empty: none).
    pub topics: Box<[Pattern]>,
    /// Topics and patterns the bearer may publish on (empty: none).
    pub publish: Box<[Pattern]>,
}

impl Grant {
    /// Whether the bearer may subscribe to `pattern`: it stays within one of the claim's patterns.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        // `within` reads an empty list as "anything": an empty claim must grant nothing.
        !self.topics.is_empty() && pattern.within(&self.topics)
    }

    /// Whether the bearer may read the whole feed (the claim covers `*`).
    pub fn may_read_everything(&self) -> bool {
        self.may_subscribe(&Pattern::Prefix("".into()))
    }

    /// Whether the bearer may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }
}

/// Why a token was refused. Each is a `401` before upgrading (or an `unauthorized` reply to a refresh); the
/// category goes to logs and counters, never to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token where one is required.
    Missing,
    /// Both an `Authorization: Bearer` header and a `token=` parameter, or several headers (RFC 6750 §2).
    Ambiguous,
    /// Not three base64url parts with a JSON header and claims.
    Malformed,
    /// The header's `alg` is not allowed for the configured key (`none`, the HS/RS confusion, ...).
    Algorithm,
    /// The signature does not verify.
    Signature,
    /// `now` is at or past `exp` plus the leeway (or `exp` is missing or not a number).
    Expired,
    /// `now` is before `nbf` minus the leeway.
    NotYetValid,
    /// `aud` does not name an accepted audience.
    Audience,
    /// `iss` is not the configured issuer.
    Issuer,
    /// The topics or publish claim is not an array of valid topics and patterns.
    Claims,
}

impl AuthError {
    /// The reason category, for log lines and counters.
    pub fn category(self) -> &'static str {
        match self {
            AuthError::Missing => "missing token",
            AuthError::Ambiguous => "more than one token",
            AuthError::Malformed => "malformed token",
            AuthError::Algorithm => "algorithm not allowed",
            AuthError::Signature => "bad signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not yet valid",
            AuthError::Audience => "wrong audience",
            AuthError::Issuer => "wrong issuer",
            AuthError::Claims => "malformed topics or publish claim",
        }
    }
}

impl AuthConfig {
    /// Resolves the key and options: the key's type fixes the algorithm family, and every algorithm named must
    /// belong to it. The error names the setting at fault.
    pub fn new(material: KeyMaterial, options: AuthOptions) -> Result<AuthConfig, String> {
        let (key, family) = keys::decoding_key(&material)?;
        let algorithms = keys::algorithms(family, &options.algorithms)?;
        keys::check_usable(&key, &algorithms)?;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        // Time is checked against the `now` the caller passes in, not the crate's own clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_aud = true; // with no audience configured, a token with `aud` is refused
        if !options.audience.is_empty() {
            validation.set_audience(&options.audience);
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(issuer) = &options.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".into());
        }
        if options.topics_claim.is_empty() || options.publish_claim.is_empty() {
            return Err("auth_topics_claim and auth_publish_claim must not be empty".into());
        }
        Ok(AuthConfig {
            key,
            algorithms,
            validation,
            leeway: options.leeway,
            optional: options.optional,
            topics_claim: options.topics_claim,
            publish_claim: options.publish_claim,
        })
    }

    /// The algorithms accepted.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }
}

/// Checks `token` at wall-clock time `now` (since the Unix epoch) and returns what it grants.
pub fn validate(token: &str, now: Duration, cfg: &AuthConfig) -> Result<Grant, AuthError> {
    // The header's algorithm first, from the header alone: no key is used with an algorithm outside the list.
    let alg = header_alg(token).ok_or(AuthError::Malformed)?;
    if !alg.parse::<Algorithm>().is_ok_and(|alg| cfg.algorithms.contains(&alg)) {
        return Err(AuthError::Algorithm); // `none` and unknown names do not parse
    }
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &cfg.key, &cfg.validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => AuthError::Signature,
            K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
                AuthError::Algorithm
            }
            K::InvalidAudience => AuthError::Audience,
            K::InvalidIssuer => AuthError::Issuer,
            K::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
            K::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
            K::InvalidClaimFormat(c) if c == "aud" => AuthError::Audience,
            K::InvalidClaimFormat(c) if c == "iss" => AuthError::Issuer,
            _ => AuthError::Malformed,
        }
    })?;
    let claims = data.claims;
    let exp = claims.get("exp").and_then(seconds).ok_or(AuthError::Expired)?;
    let valid_until = Duration::from_secs(exp).saturating_add(cfg.leeway);
    if now >= valid_until {
        return Err(AuthError::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(nbf) => {
            let nbf = seconds(nbf).ok_or(AuthError::Malformed)?;
            if now.saturating_add(cfg.leeway) < Duration::from_secs(nbf) {
                return Err(AuthError::NotYetValid);
            }
        }
    }
    let subject = match claims.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str().into()),
        Some(_) => return Err(AuthError::Malformed),
    };
    Ok(Grant {
        exp,
        valid_until,
        subject,
        topics: patterns(claims.get(&cfg.topics_claim))?,
        publish: patterns(claims.get(&cfg.publish_claim))?,
    })
}

/// The `alg` of a token's header, read from the header alone (base64url JSON).
fn header_alg(token: &str) -> Option<String> {
    let (header, rest) = token.split_once('.')?;
    if rest.matches('.').count() != 1 {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    match serde_json::from_slice::<Map<String, Value>>(&json).ok()?.remove("alg")? {
        Value::String(alg) => Some(alg),
        _ => None,
    }
}

/// A NumericDate (RFC 7519 §2): non-negative seconds, possibly with a fraction (dropped).
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

/// A topics or publish claim: absent grants nothing; otherwise an array of topics and prefix patterns.
fn patterns(claim: Option<&Value>) -> Result<Box<[Pattern]>, AuthError> {
    let Some(claim) = claim else { return Ok(Box::default()) };
    let Value::Array(items) = claim else { return Err(AuthError::Claims) };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => Pattern::parse(s).map_err(|_| AuthError::Claims),
            _ => Err(AuthError::Claims),
        })
        .collect()
}
