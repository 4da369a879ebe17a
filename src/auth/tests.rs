use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test-secret";
const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/auth/rsa_private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/auth/rsa_public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("../../tests/fixtures/auth/ec_private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("../../tests/fixtures/auth/ec_public.pem");

/// The wall clock of these tests: 2026-12-05.
const NOW: u64 = 1_796_428_800;

fn now() -> Duration {
    Duration::from_secs(NOW)
}

fn options() -> AuthOptions {
    AuthOptions {
        algorithms: Vec::new(),
        audience: Vec::new(),
        issuer: None,
        leeway: Duration::ZERO,
        optional: false,
        topics_claim: "topics".into(),
        publish_claim: "publish".into(),
    }
}

fn hs_config(options: AuthOptions) -> AuthConfig {
    AuthConfig::new(KeyMaterial::Secret(SECRET.to_vec()), options).unwrap()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET).unwrap(), claims)
}

fn claims(exp: u64) -> Value {
    json!({"sub": "alice", "exp": exp, "topics": ["BTC-*", "ETH-USD"], "publish": ["chat"]})
}

fn pat(s: &str) -> Pattern {
    Pattern::parse(s).unwrap()
}

#[test]
fn a_valid_token_grants_its_claims() {
    let cfg = hs_config(options());
    let grant = validate(&hs(&claims(NOW + 60)), now(), &cfg).unwrap();
    assert_eq!(grant.exp, NOW + 60);
    assert_eq!(grant.valid_until, Duration::from_secs(NOW + 60));
    assert_eq!(grant.subject.as_deref(), Some("alice"));
    assert_eq!(&*grant.topics, &[pat("BTC-*"), pat("ETH-USD")]);
    assert!(grant.may_subscribe(&pat("BTC-USD")) && grant.may_subscribe(&pat("BTC-U*")));
    assert!(!grant.may_subscribe(&pat("ETH-*")) && !grant.may_subscribe(&pat("*")) && !grant.may_read_everything());
    assert!(grant.may_publish("chat") && !grant.may_publish("chat2") && !grant.may_publish("BTC-USD"));
}

#[test]
fn absent_claims_grant_nothing_and_star_grants_everything() {
    let cfg = hs_config(options());
    let grant = validate(&hs(&json!({"exp": NOW + 60})), now(), &cfg).unwrap();
    assert!(grant.topics.is_empty() && grant.publish.is_empty() && grant.subject.is_none());
    assert!(!grant.may_subscribe(&pat("BTC-USD")) && !grant.may_publish("chat"), "an empty claim is not 'any'");
    let all = validate(&hs(&json!({"exp": NOW + 60, "topics": ["*"], "publish": ["*"]})), now(), &cfg).unwrap();
    assert!(all.may_read_everything() && all.may_subscribe(&pat("X")) && all.may_publish("anything"));
}

#[test]
fn claim_names_are_configurable() {
    let cfg = hs_config(AuthOptions {
        topics_claim: "https://example.com/topics".into(),
        publish_claim: "pub".into(),
        ..options()
    });
    let token = hs(&json!({"exp": NOW + 60, "https://example.com/topics": ["A"], "pub": ["B"], "topics": ["*"]}));
    let grant = validate(&token, now(), &cfg).unwrap();
    assert_eq!(&*grant.topics, &[pat("A")]);
    assert_eq!(&*grant.publish, &[pat("B")]);
}

#[test]
fn malformed_claims_are_refused() {
    let cfg = hs_config(options());
    for bad in [json!("BTC-USD"), json!([1]), json!(["a b"]), json!(["B*C"]), json!({"a": 1})] {
        let token = hs(&json!({"exp": NOW + 60, "topics": bad}));
        assert_eq!(validate(&token, now(), &cfg), Err(AuthError::Claims), "{bad}");
        let token = hs(&json!({"exp": NOW + 60, "publish": bad}));
        assert_eq!(validate(&token, now(), &cfg), Err(AuthError::Claims), "{bad}");
    }
    let token = hs(&json!({"exp": NOW + 60, "sub": 5}));
    assert_eq!(validate(&token, now(), &cfg), Err(AuthError::Malformed));
}

#[test]
fn expiry_and_not_before_with_leeway() {
    let strict = hs_config(options());
    assert_eq!(validate(&hs(&claims(NOW)), now(), &strict), Err(AuthError::Expired), "valid only before exp");
    assert_eq!(validate(&hs(&claims(NOW - 1)), now(), &strict), Err(AuthError::Expired));
    assert!(validate(&hs(&claims(NOW + 1)), now(), &strict).is_ok());
    assert!(validate(&hs(&claims(NOW + 1)), now() + Duration::from_millis(999), &strict).is_ok());
    assert_eq!(validate(&hs(&json!({"topics": ["*"]})), now(), &strict), Err(AuthError::Expired), "exp is required");
    let bad_exp = hs(&json!({"exp": "tomorrow"}));
    assert_eq!(validate(&bad_exp, now(), &strict), Err(AuthError::Expired));
    let float_exp = hs(&json!({"exp": (NOW + 10) as f64 + 0.5}));
    assert_eq!(validate(&float_exp, now(), &strict).unwrap().exp, NOW + 10);

    let lenient = hs_config(AuthOptions { leeway: Duration::from_secs(30), ..options() });
    let grant = validate(&hs(&claims(NOW - 29)), now(), &lenient).unwrap();
    assert_eq!(grant.valid_until, Duration::from_secs(NOW + 1), "valid until exp + leeway");
    assert_eq!(validate(&hs(&claims(NOW - 30)), now(), &lenient), Err(AuthError::Expired));

    let early = hs(&json!({"exp": NOW + 600, "nbf": NOW + 31}));
    assert_eq!(validate(&early, now(), &strict), Err(AuthError::NotYetValid));
    assert_eq!(validate(&early, now(), &lenient), Err(AuthError::NotYetValid));
    let soon = hs(&json!({"exp": NOW + 600, "nbf": NOW + 30}));
    assert!(validate(&soon, now(), &lenient).is_ok(), "nbf within the leeway");
    assert_eq!(validate(&soon, now(), &strict), Err(AuthError::NotYetValid));
    assert!(validate(&hs(&json!({"exp": NOW + 600, "nbf": NOW})), now(), &strict).is_ok(), "valid from nbf on");
}

#[test]
fn tampering_is_caught() {
    let cfg = hs_config(options());
    let token = hs(&claims(NOW + 60));
    let (head, sig) = token.rsplit_once('.').unwrap();
    // Another signature of the right length.
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[0] ^= 1;
    let flipped = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&raw));
    assert_eq!(validate(&flipped, now(), &cfg), Err(AuthError::Signature));
    // Claims escalated, signature kept.
    let (header, _) = head.split_once('.').unwrap();
    let escalated = URL_SAFE_NO_PAD.encode(json!({"exp": NOW + 60, "topics": ["*"]}).to_string());
    assert_eq!(validate(&format!("{header}.{escalated}.{sig}"), now(), &cfg), Err(AuthError::Signature));
    // Signed with another secret.
    let other = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret of 32 bytes or more!!").unwrap(),
        &claims(NOW + 60),
    );
    assert_eq!(validate(&other, now(), &cfg), Err(AuthError::Signature));
    for junk in ["", "a", "a.b", "a.b.c.d", "!!.e30.x", &format!("{header}.notbase64!.x")] {
        assert_eq!(validate(junk, now(), &cfg), Err(AuthError::Malformed), "{junk:?}");
    }
}

#[test]
fn alg_none_is_refused() {
    let cfg = hs_config(options());
    let body = URL_SAFE_NO_PAD.encode(claims(NOW + 60).to_string());
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        for token in [format!("{header}.{body}."), format!("{header}.{body}.AAAA")] {
            assert_eq!(validate(&token, now(), &cfg), Err(AuthError::Algorithm), "{alg}");
        }
    }
    let no_alg = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT"}).to_string());
    assert_eq!(validate(&format!("{no_alg}.{body}.AAAA"), now(), &cfg), Err(AuthError::Malformed));
}

#[test]
fn rs256_and_es256_verify_and_the_hs_rs_confusion_is_refused() {
    let rsa = AuthConfig::new(KeyMaterial::PublicKeyPem(RSA_PUBLIC.to_vec()), options()).unwrap();
    assert_eq!(rsa.algorithms(), &[Algorithm::RS256]);
    let rs_key = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
    let token = sign(Algorithm::RS256, &rs_key, &claims(NOW + 60));
    assert_eq!(validate(&token, now(), &rsa).unwrap().subject.as_deref(), Some("alice"));
    // The attack: HS256 with the public key's bytes (which an attacker has) as the HMAC secret.
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(RSA_PUBLIC).unwrap(), &claims(NOW + 60));
    assert_eq!(validate(&forged, now(), &rsa), Err(AuthError::Algorithm));
    // Another algorithm of the family is allowed only when configured.
    let rs384 = sign(Algorithm::RS384, &rs_key, &claims(NOW + 60));
    assert_eq!(validate(&rs384, now(), &rsa), Err(AuthError::Algorithm));
    let both = AuthOptions { algorithms: vec!["RS256".into(), "RS384".into()], ..options() };
    let rsa2 = AuthConfig::new(KeyMaterial::PublicKeyPem(RSA_PUBLIC.to_vec()), both).unwrap();
    assert!(validate(&rs384, now(), &rsa2).is_ok());

    let ec = AuthConfig::new(KeyMaterial::PublicKeyPem(EC_PUBLIC.to_vec()), options()).unwrap();
    assert_eq!(ec.algorithms(), &[Algorithm::ES256]);
    let es_key = EncodingKey::from_ec_pem(EC_PRIVATE).unwrap();
    let token = sign(Algorithm::ES256, &es_key, &claims(NOW + 60));
    let grant = validate(&token, now(), &ec).unwrap();
    assert!(grant.may_subscribe(&pat("BTC-USD")));
    assert_eq!(validate(&token, now(), &rsa), Err(AuthError::Algorithm), "an ES256 token against an RSA key");
    let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(EC_PUBLIC).unwrap(), &claims(NOW + 60));
    assert_eq!(validate(&forged, now(), &ec), Err(AuthError::Algorithm));
    // An RS256 token relabelled ES256 (its signature is not an ECDSA one).
    let (rs_head, rs_sig) = sign(Algorithm::RS256, &rs_key, &claims(NOW + 60))
        .rsplit_once('.')
        .map(|(h, s)| (h.split_once('.').unwrap().1.to_string(), s.to_string()))
        .unwrap();
    let es_header = URL_SAFE_NO_PAD.encode(json!({"alg": "ES256", "typ": "JWT"}).to_string());
    assert!(validate(&format!("{es_header}.{rs_head}.{rs_sig}"), now(), &ec).is_err());
}

#[test]
fn audience_and_issuer() {
    let cfg = hs_config(AuthOptions {
        audience: vec!["wsgate".into(), "feeds".into()],
        issuer: Some("https://issuer.example".into()),
        ..options()
    });
    let good = json!({"exp": NOW + 60, "aud": "feeds", "iss": "https://issuer.example"});
    assert!(validate(&hs(&good), now(), &cfg).is_ok());
    let list = json!({"exp": NOW + 60, "aud": ["other", "wsgate"], "iss": "https://issuer.example"});
    assert!(validate(&hs(&list), now(), &cfg).is_ok(), "one of the token's audiences is ours");
    for (token, err) in [
        (json!({"exp": NOW + 60, "aud": "other", "iss": "https://issuer.example"}), AuthError::Audience),
        (json!({"exp": NOW + 60, "iss": "https://issuer.example"}), AuthError::Audience),
        (json!({"exp": NOW + 60, "aud": 5, "iss": "https://issuer.example"}), AuthError::Audience),
        (json!({"exp": NOW + 60, "aud": "wsgate", "iss": "https://evil.example"}), AuthError::Issuer),
        (json!({"exp": NOW + 60, "aud": "wsgate"}), AuthError::Issuer),
    ] {
        assert_eq!(validate(&hs(&token), now(), &cfg), Err(err), "{token}");
    }
    // No audience configured: a token meant for someone else is refused, one without `aud` is fine.
    let plain = hs_config(options());
    assert_eq!(validate(&hs(&json!({"exp": NOW + 60, "aud": "other"})), now(), &plain), Err(AuthError::Audience));
    assert!(validate(&hs(&json!({"exp": NOW + 60, "iss": "anyone"})), now(), &plain).is_ok());
}

#[test]
fn configurations_that_could_be_attacked_are_refused() {
    let short = AuthConfig::new(KeyMaterial::Secret(b"short".to_vec()), options()).unwrap_err();
    assert!(short.contains("auth_secret_file"), "{short}");
    for (material, algs, needle) in [
        (KeyMaterial::Secret(SECRET.to_vec()), vec!["RS256"], "does not fit"),
        (KeyMaterial::Secret(SECRET.to_vec()), vec!["none"], "not an algorithm"),
        (KeyMaterial::PublicKeyPem(RSA_PUBLIC.to_vec()), vec!["HS256"], "does not fit"),
        (KeyMaterial::PublicKeyPem(RSA_PUBLIC.to_vec()), vec!["ES256"], "does not fit"),
        (KeyMaterial::PublicKeyPem(EC_PUBLIC.to_vec()), vec!["RS256"], "does not fit"),
        (KeyMaterial::PublicKeyPem(EC_PUBLIC.to_vec()), vec!["ES384"], "cannot verify"),
        (KeyMaterial::PublicKeyPem(RSA_PRIVATE.to_vec()), vec![], "private key"),
        (KeyMaterial::PublicKeyPem(b"not a key".to_vec()), vec![], "auth_public_key_file"),
    ] {
        let options = AuthOptions { algorithms: algs.iter().map(|s| s.to_string()).collect(), ..options() };
        let err = AuthConfig::new(material.clone(), options).unwrap_err();
        assert!(err.contains(needle), "{material:?} {algs:?}: {err}");
    }
    assert!(!format!("{:?}", KeyMaterial::Secret(SECRET.to_vec())).contains("0123"), "the secret is never shown");
    assert!(!format!("{:?}", hs_config(options())).contains("0123"));
}

#[test]
fn the_token_comes_from_the_bearer_header_or_the_query() {
    let none = std::iter::empty::<&str>;
    assert_eq!(token_from_request("/ws?topics=a", none()), Ok(None));
    assert_eq!(token_from_request("/ws?topics=a&token=abc.def.ghi", none()).unwrap().as_deref(), Some("abc.def.ghi"));
    assert_eq!(token_from_request("/ws", ["Bearer abc"].into_iter()).unwrap().as_deref(), Some("abc"));
    assert_eq!(token_from_request("/ws", ["bearer  abc "].into_iter()).unwrap().as_deref(), Some("abc"));
    assert_eq!(token_from_request("/ws", ["Basic dXNlcjpwdw=="].into_iter()), Ok(None), "not our scheme");
    assert_eq!(token_from_request("/ws?token=a", ["Bearer b"].into_iter()), Err(AuthError::Ambiguous));
    assert_eq!(token_from_request("/ws", ["Bearer a", "Bearer b"].into_iter()), Err(AuthError::Ambiguous));
    assert_eq!(token_from_request("/ws?token=", none()), Err(AuthError::Malformed));
    assert_eq!(token_from_request("/ws?token=%zz", none()), Err(AuthError::Malformed));
    assert_eq!(token_from_request("/ws", ["Bearer "].into_iter()), Err(AuthError::Malformed));
    assert!(crate::proto::handshake::SECRET_PARAMS.contains(&TOKEN_PARAM), "query tokens are redacted from logs");
}
