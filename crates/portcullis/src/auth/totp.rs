//! Time-based one-time passwords (RFC 6238, HMAC-SHA1, 30-second steps, 6 digits) — what
//! every authenticator app speaks — and single-use recovery codes.

use ring::hmac;

/// Seconds per step.
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;

/// A shared secret: 20 random bytes (160 bits, as RFC 4226 recommends).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret(***)")
    }
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

impl Secret {
    pub fn generate() -> Secret {
        let mut bytes = vec![0u8; 20];
        crate::crypto::fill_random(&mut bytes);
        Secret(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 without padding, as authenticator apps take it.
    pub fn to_base32(&self) -> String {
        let mut text = String::with_capacity(self.0.len().div_ceil(5) * 8);
        for chunk in self.0.chunks(5) {
            let mut buffer = [0u8; 5];
            buffer[..chunk.len()].copy_from_slice(chunk);
            let bits = buffer.iter().fold(0u64, |bits, byte| (bits << 8) | u64::from(*byte));
            let characters = (chunk.len() * 8).div_ceil(5);
            for index in 0..characters {
                text.push(BASE32[((bits >> (35 - index * 5)) & 31) as usize] as char);
            }
        }
        text
    }

    /// Parse base32 (case, spaces and padding ignored).
    pub fn from_base32(text: &str) -> Option<Secret> {
        let mut bytes = Vec::new();
        let (mut bits, mut count) = (0u64, 0u32);
        for character in text.chars().filter(|character| !character.is_whitespace() && *character != '=') {
            let value = BASE32.iter().position(|known| *known as char == character.to_ascii_uppercase())? as u64;
            bits = (bits << 5) | value;
            count += 5;
            if count >= 8 {
                count -= 8;
                bytes.push((bits >> count) as u8);
                bits &= (1 << count) - 1;
            }
        }
        (!bytes.is_empty()).then_some(Secret(bytes))
    }

    /// The `otpauth://` URI an authenticator app enrols from (as a QR code or a link).
    pub fn uri(&self, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
            percent_encode(account),
            self.to_base32()
        )
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The code for `step` with `digits` digits (RFC 4226 dynamic truncation).
fn code_at(secret: &Secret, step: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let digest = tag.as_ref();
    let offset = (digest[digest.len() - 1] & 0x0f) as usize;
    let value = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    value % 10u32.pow(digits)
}

/// The current code at Unix time `now`, formatted with leading zeros.
pub fn code(secret: &Secret, now: u64) -> String {
    format!("{:0width$}", code_at(secret, now / STEP, DIGITS), width = DIGITS as usize)
}

/// Check `typed` at Unix time `now`, allowing one step of clock drift either way. A code is
/// good once: `last_step` is the step of the last code accepted, and only later steps pass.
/// Returns the step to remember.
pub fn verify(secret: &Secret, typed: &str, now: u64, last_step: Option<u64>) -> Option<u64> {
    let typed: String = typed.chars().filter(|character| !character.is_whitespace()).collect();
    if typed.len() != DIGITS as usize || !typed.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let typed: u32 = typed.parse().ok()?;
    let current = now / STEP;
    let mut matched = None;
    // Compare every candidate (no early exit), so timing does not say which step matched.
    for step in [current.saturating_sub(1), current, current + 1] {
        // One machine-word comparison: no data-dependent branch over the digits.
        let equal = (code_at(secret, step, DIGITS) ^ typed) == 0;
        if equal && last_step.is_none_or(|last| step > last) {
            matched = Some(step);
        }
    }
    matched
}

/// Ten single-use recovery codes (`xxxxx-xxxxx`, 50 random bits each) and their SHA-256
/// hashes to store.
pub fn recovery_codes() -> Vec<(String, String)> {
    (0..10)
        .map(|_| {
            let mut bytes = [0u8; 7];
            crate::crypto::fill_random(&mut bytes);
            let text = Secret::from_bytes(&bytes).to_base32().to_lowercase();
            let code = format!("{}-{}", &text[..5], &text[5..10]);
            let hash = recovery_hash(&code);
            (code, hash)
        })
        .collect()
}

/// The stored form of a recovery code as typed (case, spaces and dashes ignored).
pub fn recovery_hash(typed: &str) -> String {
    let normal: String =
        typed.chars().filter(|character| character.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    crate::crypto::sha256_hex(normal.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1, 8 digits.
    #[test]
    fn rfc_6238_vectors() {
        let secret = Secret::from_bytes(b"12345678901234567890");
        for (time, expected) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(code_at(&secret, time / STEP, 8), expected, "at {time}");
        }
        assert_eq!(code(&secret, 59), "287082");
    }

    #[test]
    fn base32_round_trips_and_matches_rfc_4648() {
        assert_eq!(Secret::from_bytes(b"foobar").to_base32(), "MZXW6YTBOI");
        assert_eq!(Secret::from_bytes(b"12345678901234567890").to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let secret = Secret::generate();
        assert_eq!(Secret::from_base32(&secret.to_base32().to_lowercase()), Some(secret.clone()));
        assert_eq!(Secret::from_base32("MZXW 6YTB OI=="), Some(Secret::from_bytes(b"foobar")));
        assert_eq!(Secret::from_base32("not base32!"), None);
        let uri = secret.uri("Portcullis (acme)", "ann@example.com");
        assert!(uri.starts_with("otpauth://totp/Portcullis%20%28acme%29:ann@example.com?secret="), "{uri}");
    }

    #[test]
    fn codes_pass_once_within_a_step_of_drift() {
        let secret = Secret::generate();
        let now = 1_764_000_000;
        let step = verify(&secret, &code(&secret, now), now, None).unwrap();
        assert_eq!(step, now / STEP);
        assert_eq!(verify(&secret, &code(&secret, now), now, Some(step)), None, "a code is good once");
        assert!(verify(&secret, &code(&secret, now - STEP), now, None).is_some(), "one step behind");
        assert!(verify(&secret, &code(&secret, now + STEP), now, None).is_some(), "one step ahead");
        assert_eq!(verify(&secret, &code(&secret, now - 3 * STEP), now, None), None, "too old");
        assert_eq!(verify(&secret, "12345", now, None), None);
        assert_eq!(verify(&secret, "abcdef", now, None), None);
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_as_typed() {
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        let distinct: std::collections::BTreeSet<_> = codes.iter().map(|(code, _)| code.clone()).collect();
        assert_eq!(distinct.len(), 10);
        let (code, hash) = &codes[0];
        assert_eq!(code.len(), 11);
        assert_eq!(&recovery_hash(&code.to_uppercase().replace('-', " ")), hash);
    }
}
