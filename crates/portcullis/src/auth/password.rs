//! Passwords of local accounts (small installs and break-glass): argon2id, in the PHC string
//! format, with the parameters OWASP recommends (19 MiB, 2 passes, 1 lane).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Shortest password accepted.
pub const MIN_LENGTH: usize = 12;
/// Longest password accepted (hashing cost must stay bounded).
pub const MAX_LENGTH: usize = 1024;

/// Why a new password is refused; the text tells the person what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WeakPassword(pub String);

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("the argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Check a new password for `email` before it is hashed.
pub fn check(password: &str, email: &str) -> Result<(), WeakPassword> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(WeakPassword(format!("the password needs at least {MIN_LENGTH} characters (it has {length})")));
    }
    if password.len() > MAX_LENGTH {
        return Err(WeakPassword(format!("the password may have at most {MAX_LENGTH} bytes")));
    }
    let lower = password.to_lowercase();
    let local_part = email.split('@').next().unwrap_or(email).to_lowercase();
    if lower == email.to_lowercase() || (local_part.len() >= 4 && lower.contains(&local_part)) {
        return Err(WeakPassword("the password must not contain the email address".into()));
    }
    if password.chars().all(|character| password.starts_with(character)) {
        return Err(WeakPassword("the password must not repeat one character".into()));
    }
    Ok(())
}

/// Hash a password (after [`check`]) into a PHC string for the store.
pub fn hash(password: &str) -> String {
    let mut salt = [0u8; 16];
    crate::crypto::fill_random(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    hasher().hash_password(password.as_bytes(), &salt).expect("hashing with valid parameters succeeds").to_string()
}

/// Does `password` match the stored `phc` hash? A malformed hash never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > MAX_LENGTH {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    hasher().verify_password(password.as_bytes(), &parsed).is_ok()
}

/// A hash to verify against when the account does not exist, so a failed login takes as long
/// for an unknown email as for a wrong password.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy password that matches nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_password() {
        let stored = hash("correct horse battery staple");
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert!(verify("correct horse battery staple", &stored));
        assert!(!verify("correct horse battery stapler", &stored));
        assert!(!verify("correct horse battery staple", "not a hash"));
        assert_ne!(stored, hash("correct horse battery staple"), "salts differ");
        assert!(!verify("decoy", decoy()));
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(check("correct horse battery staple", "ann@example.com").is_ok());
        for (password, reason) in [
            ("short", "at least 12"),
            ("AnnLee@Example.com", "email"),
            ("xx-annlee-2026-xx", "email"),
            ("aaaaaaaaaaaaaaaa", "repeat"),
        ] {
            let error = check(password, "annlee@example.com").unwrap_err().0;
            assert!(error.contains(reason), "{password}: {error}");
        }
        assert!(check(&"long password ".repeat(100), "ann@example.com").is_err());
    }
}
