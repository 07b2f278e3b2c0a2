//! Verifying signed JSON Web Tokens (JWS compact form, RFC 7515/7519) against a JSON Web Key
//! Set (RFC 7517), for ID tokens from an identity provider.
//!
//! Only asymmetric algorithms are accepted: RS256/384/512, PS256/384/512, ES256/384 and EdDSA
//! (Ed25519). `none` and the HMAC family are refused outright: an HMAC key would be the
//! client secret, which is not a key a provider should sign identity with. The algorithm named
//! in the token's header must match the key's type (and the key's own `alg`, when it names one),
//! so a token cannot pick a weaker interpretation of a key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("the token is not a signed JWT (three base64url parts)")]
    Malformed,
    #[error("the token is signed with {0:?}, which is not accepted (use RS256, PS256, ES256 or EdDSA)")]
    Algorithm(String),
    #[error("no key in the provider's key set matches the token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the signature does not verify")]
    Signature,
    #[error("the key set is not valid JSON Web Keys: {0}")]
    KeySet(String),
}

/// The public half of one signing key.
#[derive(Debug, Clone)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// SEC1 uncompressed point (0x04 ‖ x ‖ y).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    public: PublicKey,
}

/// A provider's signing keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

fn decode(part: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| JwsError::Malformed)
}

impl KeySet {
    /// Parse a JWKS document. Keys of kinds this verifier does not use (encryption keys,
    /// symmetric keys, unknown curves) are skipped; a set with no usable key is an error.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwsError> {
        let set: RawSet = serde_json::from_slice(json).map_err(|error| JwsError::KeySet(error.to_string()))?;
        let mut keys = Vec::new();
        for value in set.keys {
            let Ok(raw) = serde_json::from_value::<RawJwk>(value) else { continue };
            if raw.usage.as_deref().is_some_and(|usage| usage != "sig") {
                continue;
            }
            let field = |value: &Option<String>| value.as_deref().map(decode).transpose().ok().flatten();
            let public = match (raw.kty.as_str(), raw.crv.as_deref()) {
                ("RSA", _) => match (field(&raw.n), field(&raw.e)) {
                    (Some(n), Some(e)) => PublicKey::Rsa { n, e },
                    _ => continue,
                },
                ("EC", Some(curve @ ("P-256" | "P-384"))) => match (field(&raw.x), field(&raw.y)) {
                    (Some(x), Some(y)) => {
                        let mut point = vec![4];
                        point.extend(x);
                        point.extend(y);
                        if curve == "P-256" { PublicKey::P256(point) } else { PublicKey::P384(point) }
                    }
                    _ => continue,
                },
                ("OKP", Some("Ed25519")) => match field(&raw.x) {
                    Some(x) => PublicKey::Ed25519(x),
                    None => continue,
                },
                _ => continue,
            };
            keys.push(Key { kid: raw.kid, alg: raw.alg, public });
        }
        if keys.is_empty() {
            return Err(JwsError::KeySet("it holds no RSA, EC (P-256, P-384) or Ed25519 signing key".into()));
        }
        Ok(KeySet { keys })
    }

    /// Does the set hold a key with this id?
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|key| key.kid.as_deref() == Some(kid))
    }
}

/// The protected header's fields this verifier reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// Read a token's header without verifying anything (to pick the key set to refresh).
pub fn header(token: &str) -> Result<Header, JwsError> {
    let first = token.split('.').next().ok_or(JwsError::Malformed)?;
    serde_json::from_slice(&decode(first)?).map_err(|_| JwsError::Malformed)
}

/// How to check a signature: RSA takes its parameters with the key's components; the others
/// take an encoded public key.
#[derive(Clone, Copy)]
enum Check {
    Rsa(&'static signature::RsaParameters),
    Encoded(&'static dyn VerificationAlgorithm),
}

fn algorithm(alg: &str, key: &PublicKey) -> Option<Check> {
    Some(match (alg, key) {
        ("RS256", PublicKey::Rsa { .. }) => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        ("RS384", PublicKey::Rsa { .. }) => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        ("RS512", PublicKey::Rsa { .. }) => Check::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        ("PS256", PublicKey::Rsa { .. }) => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        ("PS384", PublicKey::Rsa { .. }) => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        ("PS512", PublicKey::Rsa { .. }) => Check::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        ("ES256", PublicKey::P256(_)) => Check::Encoded(&signature::ECDSA_P256_SHA256_FIXED),
        ("ES384", PublicKey::P384(_)) => Check::Encoded(&signature::ECDSA_P384_SHA384_FIXED),
        ("EdDSA" | "Ed25519", PublicKey::Ed25519(_)) => Check::Encoded(&signature::ED25519),
        _ => return None,
    })
}

const ACCEPTED: &[&str] = &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "Ed25519"];

/// Verify `token`'s signature with a key of `keys` and return its header and claims. Claims
/// (issuer, audience, expiry, nonce) are the caller's to check.
pub fn verify(token: &str, keys: &KeySet) -> Result<(Header, Map<String, Value>), JwsError> {
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed);
    };
    let header: Header = serde_json::from_slice(&decode(head)?).map_err(|_| JwsError::Malformed)?;
    if !ACCEPTED.contains(&header.alg.as_str()) {
        return Err(JwsError::Algorithm(header.alg));
    }
    let signature = decode(signature)?;
    let signed = &token.as_bytes()[..head.len() + 1 + body.len()];
    let candidates = keys.keys.iter().filter(|key| {
        header.kid.as_ref().is_none_or(|kid| key.kid.as_ref() == Some(kid))
            && key.alg.as_ref().is_none_or(|alg| *alg == header.alg)
            && algorithm(&header.alg, &key.public).is_some()
    });
    let mut tried = false;
    for key in candidates {
        tried = true;
        let Some(algorithm) = algorithm(&header.alg, &key.public) else { continue };
        let verified = match (algorithm, &key.public) {
            (Check::Rsa(parameters), PublicKey::Rsa { n, e }) => {
                signature::RsaPublicKeyComponents { n, e }.verify(parameters, signed, &signature).is_ok()
            }
            (
                Check::Encoded(algorithm),
                PublicKey::P256(point) | PublicKey::P384(point) | PublicKey::Ed25519(point),
            ) => UnparsedPublicKey::new(algorithm, point).verify(signed, &signature).is_ok(),
            _ => false,
        };
        if verified {
            let claims = serde_json::from_slice(&decode(body)?).map_err(|_| JwsError::Malformed)?;
            return Ok((header, claims));
        }
    }
    if tried { Err(JwsError::Signature) } else { Err(JwsError::UnknownKey(header.kid)) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    /// An ES256 signer with its JWKS, for tests here and in the OIDC module.
    pub(crate) struct Signer {
        pair: EcdsaKeyPair,
        pub kid: String,
    }

    impl Signer {
        pub(crate) fn new(kid: &str) -> Signer {
            let random = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &random).unwrap();
            Signer { pair, kid: kid.to_owned() }
        }

        pub(crate) fn jwks(&self) -> String {
            let point = self.pair.public_key().as_ref();
            serde_json::json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }]})
            .to_string()
        }

        pub(crate) fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
            let head = URL_SAFE_NO_PAD.encode(header.to_string());
            let body = URL_SAFE_NO_PAD.encode(claims.to_string());
            let input = format!("{head}.{body}");
            let signature = self.pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
        }

        pub(crate) fn sign(&self, claims: &Value) -> String {
            self.sign_with_header(&serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"}), claims)
        }
    }

    #[test]
    fn a_token_signed_by_a_key_of_the_set_verifies() {
        let signer = Signer::new("k1");
        let keys = KeySet::parse(signer.jwks().as_bytes()).unwrap();
        let token = signer.sign(&serde_json::json!({"sub": "alice"}));
        let (header, claims) = verify(&token, &keys).unwrap();
        assert_eq!(header.alg, "ES256");
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn forged_and_tampered_tokens_are_refused() {
        let signer = Signer::new("k1");
        let keys = KeySet::parse(signer.jwks().as_bytes()).unwrap();
        // Signed by another key that claims the same kid.
        let forger = Signer::new("k1");
        let forged = forger.sign(&serde_json::json!({"sub": "alice"}));
        assert_eq!(verify(&forged, &keys).unwrap_err(), JwsError::Signature);
        // A real token with its body swapped.
        let token = signer.sign(&serde_json::json!({"sub": "alice"}));
        let parts: Vec<&str> = token.split('.').collect();
        let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"mallory"}"#);
        assert_eq!(verify(&format!("{}.{body}.{}", parts[0], parts[2]), &keys).unwrap_err(), JwsError::Signature);
        // An unknown kid.
        let other = Signer::new("k2").sign(&serde_json::json!({"sub": "alice"}));
        assert_eq!(verify(&other, &keys).unwrap_err(), JwsError::UnknownKey(Some("k2".into())));
        assert_eq!(verify("not-a-token", &keys).unwrap_err(), JwsError::Malformed);
    }

    #[test]
    fn none_and_hmac_are_refused_and_the_algorithm_must_fit_the_key() {
        let signer = Signer::new("k1");
        let keys = KeySet::parse(signer.jwks().as_bytes()).unwrap();
        let body = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice"}"#);
        for alg in ["none", "HS256"] {
            let head = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#));
            assert_eq!(verify(&format!("{head}.{body}."), &keys).unwrap_err(), JwsError::Algorithm(alg.into()));
        }
        // An EC key asked to verify as RSA: no key fits.
        let token = signer.sign_with_header(&serde_json::json!({"alg": "RS256", "kid": "k1"}), &serde_json::json!({}));
        assert_eq!(verify(&token, &keys).unwrap_err(), JwsError::UnknownKey(Some("k1".into())));
    }

    #[test]
    fn ed25519_keys_verify() {
        let random = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())},
        ]});
        let keys = KeySet::parse(jwks.to_string().as_bytes()).unwrap();
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA"}"#), URL_SAFE_NO_PAD.encode(r#"{"sub":"bob"}"#));
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref()));
        assert_eq!(verify(&token, &keys).unwrap().1["sub"], "bob");
    }

    #[test]
    fn a_set_without_signing_keys_is_an_error() {
        let error = KeySet::parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap_err();
        assert!(error.to_string().contains("no RSA, EC"), "{error}");
    }
}
