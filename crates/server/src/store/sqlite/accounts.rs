//! [`Accounts`] on SQLite: users and devices, each write in a savepoint of its own on the
//! writer.

use async_trait::async_trait;
use confab_protocol::{Id, User};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::push::forget_devices;
use super::rows::{id_col, internal, is_unique_violation};
use crate::store::sql_integers::id_to_sql;
use crate::store::{
    Accounts, DeviceRecord, DeviceSession, NewDevice, SeedAccount, StoreError, StoreResult,
    UserRecord,
};

#[async_trait]
impl Accounts for SqliteStore {
    async fn create_user(
        &self,
        id: Id,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> StoreResult<User> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO users (id, username, username_key, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id_to_sql(id),
                    username,
                    username.to_ascii_lowercase(),
                    hash,
                    now
                ])
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("username {username:?} is taken"))
                } else {
                    internal(e)
                }
            })?;
            Ok(User {
                user_id: id,
                username,
            })
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let key = username.to_ascii_lowercase();
        self.read(move |conn| user_where(conn, "username_key = ?1", key))
            .await
    }

    async fn user_by_id(&self, id: Id) -> StoreResult<Option<UserRecord>> {
        self.read(move |conn| user_where(conn, "id = ?1", id_to_sql(id)))
            .await
    }

    async fn seed_accounts(&self, accounts: Vec<SeedAccount>) -> StoreResult<()> {
        self.write(move |conn| {
            let mut user = conn
                .prepare_cached(
                    "INSERT INTO users (id, username, username_key, password_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(internal)?;
            let mut device = conn
                .prepare_cached(
                    "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active)
                     VALUES (?1, ?2, 'seed', ?3, ?4, ?4)",
                )
                .map_err(internal)?;
            for a in &accounts {
                user.execute(params![
                    id_to_sql(a.user_id),
                    a.username,
                    a.username.to_ascii_lowercase(),
                    a.password_hash,
                    a.now
                ])
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("username {:?} is taken", a.username))
                    } else {
                        internal(e)
                    }
                })?;
                device
                    .execute(params![
                        id_to_sql(a.device_id),
                        id_to_sql(a.user_id),
                        &a.token_hash[..],
                        a.now
                    ])
                    .map_err(internal)?;
            }
            Ok(())
        })
        .await
    }

    async fn create_device(&self, d: NewDevice) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO devices (id, user_id, name, token_hash, created_at, last_active)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id_to_sql(d.id),
                    id_to_sql(d.user_id),
                    d.name,
                    &d.token_hash[..],
                    d.now
                ])
            })
            .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id, id, cursor, last_active FROM devices
                 WHERE token_hash = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row(params![&token_hash[..]], |r| {
                    Ok(DeviceSession {
                        user_id: id_col(r, 0)?,
                        device_id: id_col(r, 1)?,
                        cursor: r.get(2)?,
                        last_active: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(internal)
        })
        .await
    }

    async fn revoke_device(&self, device_id: Id, now: i64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![id_to_sql(device_id), now]))
            .map_err(internal)?;
            forget_devices(conn, &[device_id])
        })
        .await
    }

    async fn devices(&self, user: Id) -> StoreResult<Vec<DeviceRecord>> {
        self.read(move |conn| {
            let mut s = conn
                .prepare_cached(
                    "SELECT id, name, created_at, last_active FROM devices
                     WHERE user_id = ?1 AND revoked_at IS NULL
                     ORDER BY created_at, id",
                )
                .map_err(internal)?;
            s.query_map(params![id_to_sql(user)], |r| {
                Ok(DeviceRecord {
                    device_id: id_col(r, 0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    last_active: r.get(3)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(internal)
        })
        .await
    }

    async fn touch_devices(&self, devices: Vec<Id>, now: i64) -> StoreResult<()> {
        if devices.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let mut s = conn
                .prepare_cached(
                    "UPDATE devices SET last_active = ?2
                     WHERE id = ?1 AND revoked_at IS NULL AND last_active < ?2",
                )
                .map_err(internal)?;
            for d in devices {
                s.execute(params![id_to_sql(d), now]).map_err(internal)?;
            }
            Ok(())
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
        self.write(move |conn| {
            let changed = conn
                .prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id_to_sql(user), hash]))
                .map_err(internal)?;
            if changed == 0 {
                return Err(StoreError::NotFound("no such user".into()));
            }
            let mut s = conn
                .prepare_cached(
                    "UPDATE devices SET revoked_at = ?3
                     WHERE user_id = ?1 AND id <> ?2 AND revoked_at IS NULL
                     RETURNING id",
                )
                .map_err(internal)?;
            let revoked: Vec<Id> = s
                .query_map(params![id_to_sql(user), id_to_sql(keep_device), now], |r| {
                    id_col(r, 0)
                })
                .and_then(Iterator::collect)
                .map_err(internal)?;
            forget_devices(conn, &revoked)?;
            Ok(revoked)
        })
        .await
    }
}

/// The account whose row matches `condition` (one `?1` parameter, bound to `param`).
fn user_where(
    conn: &rusqlite::Connection,
    condition: &'static str,
    param: impl rusqlite::ToSql,
) -> StoreResult<Option<UserRecord>> {
    conn.prepare_cached(&format!(
        "SELECT id, username, password_hash FROM users WHERE {condition}"
    ))
    .and_then(|mut s| {
        s.query_row(params![param], |r| {
            Ok(UserRecord {
                id: id_col(r, 0)?,
                username: r.get(1)?,
                password_hash: r.get(2)?,
            })
        })
        .optional()
    })
    .map_err(internal)
}
