//! Passwords and tokens.
//!
//! Passwords are hashed with Argon2id at OWASP's minimum (m = 19 MiB, t = 2, p = 1). A login
//! for an unknown user verifies against a dummy hash so that it costs as much as a wrong
//! password: response time does not reveal which usernames exist. Tokens are 256 random bits;
//! only their SHA-256 is stored, so a leaked database does not hold usable tokens.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Argon2id cost: OWASP's floor.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// Password hashing and token minting for one server.
pub struct Auth {
    dummy_hash: String,
    /// Bounds concurrent hashes: each takes 19 MiB and a core for tens of milliseconds, so a
    /// login flood queues instead of exhausting memory.
    hashing: Semaphore,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("valid argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &[u8]) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Internal(e.to_string()))?;
    argon2()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing failed: {e}")))
}

fn verify_blocking(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| argon2().verify_password(password, &parsed).is_ok())
        .unwrap_or(false)
}

impl Auth {
    pub fn new() -> Result<Self> {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        Ok(Auth {
            dummy_hash: hash_blocking(&random)?,
            hashing: Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            ),
        })
    }

    /// Argon2id PHC string of `password`.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| Error::Internal("closed".into()))?;
        let password = password.as_bytes().to_vec();
        tokio::task::spawn_blocking(move || hash_blocking(&password))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no user, so
    /// both failures take the same time.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let known = hash.is_some();
        let hash = hash.unwrap_or(&self.dummy_hash).to_owned();
        let password = password.as_bytes().to_vec();
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&password, &hash))
            .await
            .unwrap_or(false);
        ok && known
    }
}

/// A new bearer token and the hash to store for it.
pub fn new_token() -> (String, [u8; 32]) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = URL_SAFE_NO_PAD.encode(raw);
    let hash = token_hash(&token);
    (token, hash)
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Username rule of PROTOCOL.md: 3-32 chars of `A-Z a-z 0-9 _ . -`.
pub fn validate_username(name: &str) -> Result<()> {
    let ok = (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            "username must be 3-32 characters of A-Z a-z 0-9 _ . -",
        ))
    }
}

/// Password rule of PROTOCOL.md: 8-1024 bytes.
pub fn validate_password(password: &str) -> Result<()> {
    if (8..=1024).contains(&password.len()) {
        Ok(())
    } else {
        Err(Error::bad_request("password must be 8-1024 bytes"))
    }
}

/// `Authorization: Bearer <token>`, if present.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
        let auth = Auth::new().unwrap();
        let h = auth.hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(auth.verify("correct horse", Some(&h)).await);
        assert!(!auth.verify("wrong horse", Some(&h)).await);
        assert!(!auth.verify("correct horse", None).await);
    }

    #[test]
    fn tokens_are_256_bits_and_hashed() {
        let (t, h) = new_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&t).unwrap().len(), 32);
        assert_eq!(h, token_hash(&t));
        assert_ne!(new_token().0, t);
    }

    #[test]
    fn username_and_password_rules() {
        for ok in ["bob", "Bob_1.x-y", &"a".repeat(32)] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", &"a".repeat(33), "bob!", "bób", "a b"] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"x".repeat(1025)).is_err());
    }
}
