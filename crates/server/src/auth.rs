//! Passwords and tokens.
//!
//! Passwords are hashed with Argon2id at OWASP's minimum (m = 19 MiB, t = 2, p = 1). A login
//! for an unknown user verifies against a dummy hash so that it costs as much as a wrong
//! password: response time does not reveal which usernames exist. Tokens are 256 random bits;
//! only their SHA-256 is stored, so a leaked database does not hold usable tokens.
//!
//! Hashing has its own bounded queue ([`Auth::new`]): a few hashes at once, fewer than the
//! cores, so a login flood cannot take every core from message handling, and a bounded number
//! waiting, past which a request is refused at once (503 `unavailable`, `Retry-After: 1`)
//! rather than queued for ever.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::AuthConfig;

use crate::error::{Error, Result};

/// Argon2id cost: OWASP's floor.
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

/// How long a client refused for a full hashing queue is asked to wait: the queue drains in
/// well under a second when it is not flooded.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Password hashing and token minting for one server.
pub struct Auth {
    dummy_hash: String,
    /// A place in line: the hashes running plus those waiting. None left: refused at once.
    admitted: Semaphore,
    /// The hashes running at once: each takes 19 MiB and a core for tens of milliseconds.
    running: Semaphore,
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
    /// Runs at most `hash_concurrency` hashes at once with at most `hash_queue` waiting (both
    /// at least as given, the concurrency at least 1). Makes one hash itself (the dummy).
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let mut random = [0u8; 32];
        rand::rng().fill_bytes(&mut random);
        let running = config.hash_concurrency.max(1);
        Ok(Auth {
            dummy_hash: hash_blocking(&random)?,
            admitted: Semaphore::new(running.saturating_add(config.hash_queue)),
            running: Semaphore::new(running),
        })
    }

    /// Runs `work` on the blocking pool once a hashing slot is free, or refuses at once when
    /// the queue for the slots is full.
    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _in_line = self.admitted.try_acquire().map_err(|_| {
            Error::busy(
                "too many logins and registrations at once; retry shortly",
                BUSY_RETRY,
            )
        })?;
        let _running = self
            .running
            .acquire()
            .await
            .map_err(|_| Error::Internal("hashing closed".into()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// Argon2id PHC string of `password`.
    pub async fn hash(&self, password: &str) -> Result<String> {
        let password = password.as_bytes().to_vec();
        self.run(move || hash_blocking(&password)).await?
    }

    /// Checks `password` against `hash`, or against the dummy hash when there is no user, so
    /// both failures take the same time. An error only when hashing is refused (busy).
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or(&self.dummy_hash).to_owned();
        let password = password.as_bytes().to_vec();
        let ok = self.run(move || verify_blocking(&password, &hash)).await?;
        Ok(ok && known)
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
        let auth = Auth::new(&AuthConfig::default()).unwrap();
        let h = auth.hash("correct horse").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(auth.verify("correct horse", Some(&h)).await.unwrap());
        assert!(!auth.verify("wrong horse", Some(&h)).await.unwrap());
        assert!(!auth.verify("correct horse", None).await.unwrap());
    }

    #[tokio::test]
    async fn a_full_hashing_queue_refuses_at_once() {
        let auth = std::sync::Arc::new(
            Auth::new(&AuthConfig {
                hash_concurrency: 1,
                hash_queue: 2,
                ..AuthConfig::default()
            })
            .unwrap(),
        );
        // One hash running (held on a gate) and two waiting fill the line.
        let (open, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Arc::new(std::sync::Mutex::new(gate));
        let mut held = Vec::new();
        for _ in 0..3 {
            let (auth, gate) = (auth.clone(), gate.clone());
            held.push(tokio::spawn(async move {
                auth.run(move || {
                    let _ = gate.lock().unwrap().recv();
                })
                .await
            }));
        }
        while auth.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let refused = auth.verify("password1", None).await.unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "at once"
        );
        assert_eq!(refused.code(), confab_protocol::ErrorCode::Unavailable);
        assert!(
            matches!(refused, Error::RetryLater { retry_after, .. } if retry_after == BUSY_RETRY)
        );
        // Once the line moves, hashing works again.
        for _ in 0..3 {
            open.send(()).unwrap();
        }
        for h in held {
            h.await.unwrap().unwrap();
        }
        assert!(!auth.verify("password1", None).await.unwrap());
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
