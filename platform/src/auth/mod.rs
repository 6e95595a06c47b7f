//! Who is asking: access tokens (JWT), refresh tokens, and the `Caller` extractor through which
//! every route declares the roles it admits.

mod extract;
pub mod password;
pub mod refresh;
pub mod routes;
pub mod tokens;

pub use extract::{verify_for, Allowed, AnyRole, Authenticated, Caller, Staff};
pub use tokens::{Claims, TokenService};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The stored form of a high-entropy secret (player secrets, refresh tokens, device ids).
/// These carry 256 bits of randomness or are only looked up, so a fast hash is enough; human
/// passwords use Argon2 instead.
pub fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Compares a presented secret with a stored hash in constant time.
pub fn secret_matches(secret: &str, stored_hash: &str) -> bool {
    hash_secret(secret)
        .as_bytes()
        .ct_eq(stored_hash.as_bytes())
        .into()
}

/// A fresh random secret: 32 bytes, URL-safe base64 without padding (43 characters).
pub fn new_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_match_only_their_hash() {
        let secret = new_secret();
        assert_eq!(secret.len(), 43);
        assert_ne!(secret, new_secret());
        let stored = hash_secret(&secret);
        assert!(secret_matches(&secret, &stored));
        assert!(!secret_matches(&new_secret(), &stored));
    }
}
