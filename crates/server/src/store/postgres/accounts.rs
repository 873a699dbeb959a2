//! [`Accounts`] on PostgreSQL: users and devices, each write a transaction of its own; seeding
//! in multi-row inserts. Revoking a device forgets its push subscription in the same
//! transaction.

use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::{Id, User};
use deadpool_postgres::Transaction;

use super::PostgresStore;
use super::push::forget_devices;
use super::retry::{Failure, classify};
use super::rows::{execute, id_col, is_unique_violation, query, query_opt, u64_col};
use crate::store::sql_integers::{id_from_sql, id_to_sql};
use crate::store::{
    Accounts, DeviceRecord, DeviceSession, NewDevice, SeedAccount, StoreError, StoreResult,
    UserRecord,
};

/// Accounts per multi-row insert in `seed_accounts`.
const SEED_CHUNK: usize = 5_000;

async fn seed_in(tx: &Transaction<'_>, accounts: &[SeedAccount]) -> Result<(), Failure> {
    let users = tx
        .prepare_cached(
            "INSERT INTO users (id, username, username_key, password_hash, created_at)
             SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[])",
        )
        .await?;
    let devices = tx
        .prepare_cached(
            "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active)
             SELECT d, u, 'seed', t, c, c
             FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[]) AS x(d, u, t, c)",
        )
        .await?;
    for chunk in accounts.chunks(SEED_CHUNK) {
        let ids: Vec<i64> = chunk.iter().map(|a| id_to_sql(a.user_id)).collect();
        let names: Vec<&str> = chunk.iter().map(|a| a.username.as_str()).collect();
        let keys: Vec<String> = chunk
            .iter()
            .map(|a| a.username.to_ascii_lowercase())
            .collect();
        let hashes: Vec<&str> = chunk.iter().map(|a| a.password_hash.as_str()).collect();
        let nows: Vec<i64> = chunk.iter().map(|a| a.now).collect();
        tx.execute(&users, &[&ids, &names, &keys, &hashes, &nows])
            .await
            .map_err(|e| {
                if is_unique_violation(&e, None) {
                    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
                    Failure::Final(StoreError::Conflict(format!(
                        "a username is taken: {detail}"
                    )))
                } else {
                    classify(&e)
                }
            })?;
        let device_ids: Vec<i64> = chunk.iter().map(|a| id_to_sql(a.device_id)).collect();
        let tokens: Vec<&[u8]> = chunk.iter().map(|a| &a.token_hash[..]).collect();
        tx.execute(&devices, &[&device_ids, &ids, &tokens, &nows])
            .await?;
    }
    Ok(())
}

#[async_trait]
impl Accounts for PostgresStore {
    async fn create_user(
        &self,
        id: Id,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> StoreResult<User> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |tx| {
            let (username, hash) = (username.clone(), hash.clone());
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO users (id, username, username_key, password_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &id_to_sql(id),
                        &username,
                        &username.to_ascii_lowercase(),
                        &hash,
                        &now,
                    ],
                )
                .await
                .map_err(|e| {
                    if is_unique_violation(&e, None) {
                        Failure::Final(StoreError::Conflict(format!(
                            "username {username:?} is taken"
                        )))
                    } else {
                        classify(&e)
                    }
                })?;
                Ok(User {
                    user_id: id,
                    username,
                })
            })
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let key = username.to_ascii_lowercase();
        self.run(move |c| {
            let key = key.clone();
            Box::pin(async move {
                let sql = "SELECT id, username, password_hash FROM users WHERE username_key = $1";
                user_from(query_opt(c, sql, &[&key]).await?)
            })
        })
        .await
    }

    async fn user_by_id(&self, id: Id) -> StoreResult<Option<UserRecord>> {
        self.run(move |c| {
            Box::pin(async move {
                let sql = "SELECT id, username, password_hash FROM users WHERE id = $1";
                user_from(query_opt(c, sql, &[&id_to_sql(id)]).await?)
            })
        })
        .await
    }

    async fn seed_accounts(&self, accounts: Vec<SeedAccount>) -> StoreResult<()> {
        let accounts = Arc::new(accounts);
        self.write(move |tx| {
            let accounts = accounts.clone();
            Box::pin(async move { seed_in(tx, &accounts).await })
        })
        .await
    }

    async fn create_device(&self, d: NewDevice) -> StoreResult<()> {
        self.write(move |tx| {
            let d = d.clone();
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active)
                     VALUES ($1, $2, $3, $4, $5, $5)",
                    &[
                        &id_to_sql(d.id),
                        &id_to_sql(d.user_id),
                        &d.name,
                        &&d.token_hash[..],
                        &d.now,
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>> {
        self.run(move |c| {
            Box::pin(async move {
                let row = query_opt(
                    c,
                    "SELECT user_id, id, cursor, last_active FROM devices
                     WHERE token_hash = $1 AND revoked_at IS NULL",
                    &[&&token_hash[..]],
                )
                .await?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(DeviceSession {
                    user_id: id_col(&r, 0)?,
                    device_id: id_col(&r, 1)?,
                    cursor: u64_col(&r, 2)?,
                    last_active: r.try_get(3)?,
                }))
            })
        })
        .await
    }

    async fn revoke_device(&self, device_id: Id, now: i64) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move {
                execute(
                    tx,
                    "UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[&id_to_sql(device_id), &now],
                )
                .await?;
                forget_devices(tx, &[id_to_sql(device_id)]).await
            })
        })
        .await
    }

    async fn devices(&self, user: Id) -> StoreResult<Vec<DeviceRecord>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    "SELECT id, name, created_at, last_active FROM devices
                     WHERE user_id = $1 AND revoked_at IS NULL
                     ORDER BY created_at, id",
                    &[&id_to_sql(user)],
                )
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(DeviceRecord {
                            device_id: id_col(r, 0)?,
                            name: r.try_get(1)?,
                            created_at: r.try_get(2)?,
                            last_active: r.try_get(3)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn touch_devices(&self, devices: Vec<Id>, now: i64) -> StoreResult<()> {
        if devices.is_empty() {
            return Ok(());
        }
        let ids: Arc<Vec<i64>> = Arc::new(devices.into_iter().map(id_to_sql).collect());
        self.write(move |tx| {
            let ids = ids.clone();
            Box::pin(async move {
                // Two nodes touching one device (it has sockets on both) may deadlock here;
                // PostgreSQL aborts one and the retry loop runs it again.
                execute(
                    tx,
                    "UPDATE devices SET last_active = $2
                     WHERE id = ANY($1) AND revoked_at IS NULL AND last_active < $2",
                    &[&*ids, &now],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn set_password(
        &self,
        user: Id,
        password_hash: &str,
        keep_device: Id,
        now: i64,
    ) -> StoreResult<Vec<Id>> {
        let hash = password_hash.to_owned();
        self.write(move |tx| {
            let hash = hash.clone();
            Box::pin(async move {
                let changed = execute(
                    tx,
                    "UPDATE users SET password_hash = $2 WHERE id = $1",
                    &[&id_to_sql(user), &hash],
                )
                .await?;
                if changed == 0 {
                    return Err(Failure::Final(StoreError::NotFound("no such user".into())));
                }
                let rows = query(
                    tx,
                    "UPDATE devices SET revoked_at = $3
                     WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL
                     RETURNING id",
                    &[&id_to_sql(user), &id_to_sql(keep_device), &now],
                )
                .await?;
                let revoked: Vec<i64> = rows
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                forget_devices(tx, &revoked).await?;
                Ok(revoked.into_iter().map(id_from_sql).collect())
            })
        })
        .await
    }
}

/// An account from a row of `SELECT id, username, password_hash`, if there is one.
fn user_from(row: Option<tokio_postgres::Row>) -> Result<Option<UserRecord>, Failure> {
    let Some(r) = row else { return Ok(None) };
    Ok(Some(UserRecord {
        id: id_col(&r, 0)?,
        username: r.try_get(1)?,
        password_hash: r.try_get(2)?,
    }))
}
