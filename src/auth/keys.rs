//! The verification key and the algorithms it allows. The key's type decides the algorithm family; the
//! algorithms named in the settings must all belong to it (so no configuration can let an `HS256` token be
//! checked against an RSA or EC key's bytes).

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// The bytes of the configured key, as read from its file.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// An HMAC secret (`auth_secret_file`): the file's bytes, less one trailing line break.
    Secret(Vec<u8>),
    /// An RSA or EC (P-256, P-384) public key in PEM (`auth_public_key_file`), SubjectPublicKeyInfo
    /// (`BEGIN PUBLIC KEY`) or, for RSA, PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    PublicKeyPem(Vec<u8>),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyMaterial::Secret(s) => write!(f, "Secret({} bytes)", s.len()),
            KeyMaterial::PublicKeyPem(p) => write!(f, "PublicKeyPem({} bytes)", p.len()),
        }
    }
}

/// Shortest HMAC secret accepted: RFC 7518 §3.2 wants a key at least as long as the hash (256 bits for HS256).
pub const MIN_SECRET_BYTES: usize = 32;

/// The decoding key and its family.
pub(super) fn decoding_key(material: &KeyMaterial) -> Result<(DecodingKey, AlgorithmFamily), String> {
    match material {
        KeyMaterial::Secret(secret) => {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "auth_secret_file: the secret has {} bytes; at least {MIN_SECRET_BYTES} are needed",
                    secret.len()
                ));
            }
            let key = DecodingKey::from_secret(secret).map_err(|e| format!("auth_secret_file: {e}"))?;
            Ok((key, AlgorithmFamily::Hmac))
        }
        KeyMaterial::PublicKeyPem(pem) => {
            if String::from_utf8_lossy(pem).contains("PRIVATE KEY") {
                return Err("auth_public_key_file holds a private key: give the gateway the public key only".into());
            }
            if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                return Ok((key, AlgorithmFamily::Rsa));
            }
            match DecodingKey::from_ec_pem(pem) {
                Ok(key) => Ok((key, AlgorithmFamily::Ec)),
                Err(e) => Err(format!("auth_public_key_file: not an RSA or EC public key in PEM ({e})")),
            }
        }
    }
}

/// The algorithms allowed: those named (each of `family`), or the family's usual one.
pub(super) fn algorithms(family: AlgorithmFamily, names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Ok(vec![match family {
            AlgorithmFamily::Hmac => Algorithm::HS256,
            AlgorithmFamily::Rsa => Algorithm::RS256,
            AlgorithmFamily::Ec | AlgorithmFamily::Ed => Algorithm::ES256,
        }]);
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let alg: Algorithm = name
            .parse()
            .map_err(|_| format!("auth_algorithms: {name:?} is not an algorithm (none is never allowed)"))?;
        if alg.family() != family {
            return Err(format!(
                "auth_algorithms: {name} does not fit the configured key ({family:?}); a key allows only its own family"
            ));
        }
        if !out.contains(&alg) {
            out.push(alg);
        }
    }
    Ok(out)
}

/// Fails at start, not on the first client, when the key cannot verify one of the algorithms (an EC key of
/// another curve than `ES256` needs, a malformed RSA key).
pub(super) fn check_usable(key: &DecodingKey, algorithms: &[Algorithm]) -> Result<(), String> {
    for &alg in algorithms {
        // An arbitrary signature: the answer is `false`; an error means the key cannot serve `alg`.
        jsonwebtoken::crypto::verify("AAAA", b"probe", key, alg)
            .map_err(|e| format!("auth key cannot verify {alg:?} tokens: {e}"))?;
    }
    Ok(())
}
