//! Token auth: `auth::validate` and `auth::token_from_request` on arbitrary text never panic, and no input is
//! accepted as a token without the key's signature (the fuzzer cannot forge HMAC-SHA256: an `Ok` is a bug,
//! e.g. an `alg` that skipped verification).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsgate::auth::{token_from_request, validate, AuthConfig, AuthOptions, KeyMaterial};

fn config() -> &'static AuthConfig {
    static CONFIG: OnceLock<AuthConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let options = AuthOptions {
            algorithms: Vec::new(),
            audience: Vec::new(),
            issuer: None,
            leeway: Duration::from_secs(30),
            optional: false,
            topics_claim: "topics".into(),
            publish_claim: "publish".into(),
        };
        AuthConfig::new(KeyMaterial::Secret(b"fuzz-secret-0123456789abcdef-0123456789".to_vec()), options)
            .expect("a valid configuration")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now = Duration::from_secs(1_796_428_800);
    if let Ok(grant) = validate(text, now, config()) {
        panic!("accepted without a signature: {grant:?}");
    }
    let (target, header) = text.split_once('\n').unwrap_or((text, ""));
    let _ = token_from_request(target, std::iter::once(header));
});
