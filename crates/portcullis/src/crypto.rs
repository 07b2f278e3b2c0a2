//! Keys and the few cryptographic operations the gateway needs, all from `ring`.
//!
//! One [`SecretKey`] (32 bytes, from config, never from the database) is expanded with HKDF
//! into independent sub-keys, one per purpose, so that a sealed session can never be
//! replayed as a stored secret or an audit digest, and vice versa.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{self, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf, hmac};
use std::fmt;

/// The deployment's root key. Debug never shows it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SecretKey(***)")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "the secret key must be 32 random bytes written as 64 hex digits or 43 base64url characters \
     (generate one with: portcullis secret-key generate)"
)]
pub struct BadKey;

impl SecretKey {
    /// A fresh random key.
    pub fn generate() -> SecretKey {
        let mut bytes = [0u8; 32];
        fill_random(&mut bytes);
        SecretKey(bytes)
    }

    /// Read a key written by [`SecretKey::encode`] (base64url) or as 64 hex digits.
    pub fn parse(text: &str) -> Result<SecretKey, BadKey> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            (0..32)
                .map(|index| u8::from_str_radix(&text[index * 2..index * 2 + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| BadKey)?
        } else {
            URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| BadKey)?
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadKey)?;
        Ok(SecretKey(bytes))
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Derive the keys for every purpose.
    pub fn derive(&self) -> Keys {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"portcullis-v1");
        let prk = salt.extract(&self.0);
        let expand = |purpose: &[u8]| -> [u8; 32] {
            let info = [purpose];
            let okm = prk.expand(&info, hkdf::HKDF_SHA256).expect("32 bytes is a valid HKDF length");
            let mut out = [0u8; 32];
            okm.fill(&mut out).expect("32 bytes is a valid HKDF length");
            out
        };
        Keys {
            session: Sealer::new(&expand(b"session")),
            secrets: Sealer::new(&expand(b"secrets")),
            audit_arguments: Sealer::new(&expand(b"audit-arguments")),
            audit_digest: hmac::Key::new(hmac::HMAC_SHA256, &expand(b"audit-digest")),
            console: Sealer::new(&expand(b"console")),
            csrf: hmac::Key::new(hmac::HMAC_SHA256, &expand(b"csrf")),
        }
    }
}

/// The purpose-bound keys derived from the [`SecretKey`].
#[derive(Clone)]
pub struct Keys {
    /// Seals `Mcp-Session-Id` values.
    pub session: Sealer,
    /// Encrypts upstream credentials at rest.
    pub secrets: Sealer,
    /// Encrypts tool arguments in audit events.
    pub audit_arguments: Sealer,
    /// Keys the digest of tool arguments, so equal arguments can be found without decrypting.
    audit_digest: hmac::Key,
    /// Seals console cookies (sessions, an enrolment in progress).
    pub console: Sealer,
    /// Signs the console's CSRF tokens.
    csrf: hmac::Key,
}

impl fmt::Debug for Keys {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Keys(***)")
    }
}

impl Keys {
    /// A keyed digest (HMAC-SHA256, hex) of `bytes`.
    pub fn audit_digest(&self, bytes: &[u8]) -> String {
        hex(hmac::sign(&self.audit_digest, bytes).as_ref())
    }

    /// The CSRF token for the browser holding the CSRF cookie `nonce`.
    pub fn csrf_token(&self, nonce: &str) -> String {
        hex(hmac::sign(&self.csrf, nonce.as_bytes()).as_ref())
    }

    /// Is `token` the CSRF token for `nonce`? (Constant time.)
    pub fn csrf_valid(&self, nonce: &str, token: &str) -> bool {
        let Some(bytes) = unhex(token) else { return false };
        hmac::verify(&self.csrf, nonce.as_bytes(), &bytes).is_ok()
    }
}

/// Are two secrets equal? In time that depends only on their lengths.
pub fn same_secret(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |difference, (a, b)| difference | (a ^ b)) == 0
}

/// ChaCha20-Poly1305 with a random 96-bit nonce stored in front of the ciphertext.
#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
}

/// Sealed data did not open: wrong key, tampered or truncated.
#[derive(Debug, thiserror::Error)]
#[error("sealed data could not be opened (wrong key or tampered)")]
pub struct OpenError;

impl Sealer {
    fn new(key: &[u8; 32]) -> Sealer {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key");
        Sealer { key: std::sync::Arc::new(LessSafeKey::new(unbound)) }
    }

    /// Encrypt and authenticate `plaintext`; `context` is authenticated but not stored, so
    /// data sealed for one context does not open in another.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce_bytes = [0u8; 12];
        fill_random(&mut nonce_bytes);
        let mut out = Vec::with_capacity(12 + plaintext.len() + 16);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                aead::Aad::from(context),
                &mut out[12..],
            )
            .expect("ChaCha20-Poly1305 sealing does not fail for in-memory sizes");
        out.extend_from_slice(tag.as_ref());
        out
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 12 + 16 {
            return Err(OpenError);
        }
        let (nonce_bytes, ciphertext) = sealed.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| OpenError)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = self.key.open_in_place(nonce, aead::Aad::from(context), &mut buffer).map_err(|_| OpenError)?;
        let length = plaintext.len();
        buffer.truncate(length);
        Ok(buffer)
    }

    /// [`Sealer::seal`] as base64url text, for headers.
    pub fn seal_text(&self, plaintext: &[u8], context: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.seal(plaintext, context))
    }

    pub fn open_text(&self, text: &str, context: &[u8]) -> Result<Vec<u8>, OpenError> {
        let sealed = URL_SAFE_NO_PAD.decode(text).map_err(|_| OpenError)?;
        self.open(&sealed, context)
    }
}

/// Fill `bytes` from the operating system's random source. Small requests (nonces, ids,
/// tokens) are served from a per-thread buffer of its output, refilled a few hundred bytes at
/// a time: the request path needs a nonce per call, and a system call each would cost more
/// than the sealing itself.
pub fn fill_random(bytes: &mut [u8]) {
    use std::cell::RefCell;
    const POOL: usize = 512;
    struct Pool {
        bytes: [u8; POOL],
        used: usize,
    }
    thread_local! {
        static BUFFERED: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL], used: POOL }) };
    }
    if bytes.len() > 64 {
        SystemRandom::new().fill(bytes).expect("the operating system random source works");
        return;
    }
    BUFFERED.with_borrow_mut(|pool| {
        if POOL - pool.used < bytes.len() {
            SystemRandom::new().fill(&mut pool.bytes).expect("the operating system random source works");
            pool.used = 0;
        }
        let taken = &mut pool.bytes[pool.used..pool.used + bytes.len()];
        bytes.copy_from_slice(taken);
        // Handed out once: wiped so the same bytes can never be given twice.
        taken.fill(0);
        pool.used += bytes.len();
    });
}

/// A random identifier: `bytes` random bytes as base64url.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    fill_random(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// A unique id for a record that needs no secrecy (audit events, correlation ids): 64 random
/// bits chosen once per process and a 64-bit counter, hex. No system call per id, unlike
/// [`new_id`], which the request path would otherwise pay twice per call.
pub fn unique_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        fill_random(&mut bytes);
        u64::from_le_bytes(bytes)
    });
    format!("{prefix:016x}{:016x}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A random id for database rows (128 bits, hex).
pub fn new_id() -> String {
    let mut buffer = [0u8; 16];
    fill_random(&mut buffer);
    hex(&buffer)
}

/// SHA-256 of `bytes`, hex. Used for API keys, which are long random strings, so a fast
/// hash is enough to make a stolen database useless for authentication.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 15) as usize] as char);
    }
    out
}

/// Bytes from lower- or upper-case hex; `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_context_binding() {
        let keys = SecretKey::generate().derive();
        let sealed = keys.session.seal_text(b"hello", b"ctx");
        assert_eq!(keys.session.open_text(&sealed, b"ctx").unwrap(), b"hello");
        assert!(keys.session.open_text(&sealed, b"other").is_err());
        assert!(keys.secrets.open_text(&sealed, b"ctx").is_err());
        let other = SecretKey::generate().derive();
        assert!(other.session.open_text(&sealed, b"ctx").is_err());
    }

    #[test]
    fn buffered_random_bytes_never_repeat() {
        // 12-byte nonces across several refills of the per-thread buffer: all distinct, and
        // none of them the zeros a handed-out slot is wiped to.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut nonce = [0u8; 12];
            fill_random(&mut nonce);
            assert_ne!(nonce, [0u8; 12]);
            assert!(seen.insert(nonce), "a nonce came out twice");
        }
        let mut large = [0u8; 100];
        fill_random(&mut large);
        assert!(large.iter().any(|byte| *byte != 0));
    }

    #[test]
    fn key_parsing() {
        let key = SecretKey::generate();
        assert_eq!(SecretKey::parse(&key.encode()).unwrap().0, key.0);
        let hex_text = hex(&key.0);
        assert_eq!(SecretKey::parse(&hex_text).unwrap().0, key.0);
        assert!(SecretKey::parse("short").is_err());
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
    }
}
