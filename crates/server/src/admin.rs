//! Operator tasks that work on a store directly, without a running server.

use confab_protocol::Id;
use serde::{Deserialize, Serialize};

use crate::auth::{new_token, validate_password, validate_username};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::App;
use crate::store::SeedAccount;
use crate::time::now_ms;

/// Accounts written per store transaction while seeding.
const SEED_CHUNK: usize = 5_000;

/// One seeded account and its device's bearer token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeededAccount {
    pub username: String,
    pub user_id: Id,
    pub device_id: Id,
    pub token: String,
}

/// Creates `count` accounts named `{prefix}{0..count}`, all with `password`, each with one
/// device, and returns their tokens.
///
/// For load tests and demos: the password is hashed with Argon2id **once** and that hash is
/// shared by every seeded account (a real registration hashes each password with its own
/// salt). That is what makes 100,000 accounts take seconds instead of an hour of hashing; it
/// is safe only because these accounts share one password anyway. Tokens are minted and
/// stored hashed exactly as a login would.
pub async fn seed(
    config: &Config,
    prefix: &str,
    count: usize,
    password: &str,
    progress: impl FnMut(usize),
) -> Result<Vec<SeededAccount>> {
    // Before the store is opened (or created), so that bad input touches nothing.
    validate_seed(prefix, count, password)?;
    let app = crate::wiring::open(config.clone())
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .app;
    let seeded = seed_into(&app, prefix, count, password, progress).await;
    app.store.close().await;
    seeded
}

/// [`seed`] through an app that is already open (for instance a running node's, whose
/// embedded store no second process may open).
pub async fn seed_into(
    app: &App,
    prefix: &str,
    count: usize,
    password: &str,
    mut progress: impl FnMut(usize),
) -> Result<Vec<SeededAccount>> {
    validate_seed(prefix, count, password)?;
    let hash = app.auth.hash(password).await?;
    let mut out = Vec::with_capacity(count);
    let now = now_ms();
    let mut start = 0;
    while start < count {
        let end = (start + SEED_CHUNK).min(count);
        let mut chunk = Vec::with_capacity(end - start);
        for i in start..end {
            let (token, token_hash) = new_token();
            let account = SeededAccount {
                username: format!("{prefix}{i}"),
                user_id: app.ids.next_id()?,
                device_id: app.ids.next_id()?,
                token,
            };
            chunk.push(SeedAccount {
                user_id: account.user_id,
                username: account.username.clone(),
                password_hash: hash.clone(),
                device_id: account.device_id,
                token_hash,
                now,
            });
            out.push(account);
        }
        app.store.seed_accounts(chunk).await?;
        start = end;
        progress(start);
    }
    Ok(out)
}

/// The shared password is a valid one, and so is the longest username the run makes.
fn validate_seed(prefix: &str, count: usize, password: &str) -> Result<()> {
    validate_password(password)?;
    validate_username(&format!("{prefix}{}", count.saturating_sub(1)))
}
