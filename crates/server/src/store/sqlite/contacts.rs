//! [`Contacts`] on SQLite: contacts, blocks and last seen. A block also tells the writer, which
//! skips the blocks lookup of a message to a user who blocks nobody.

use async_trait::async_trait;
use confab_protocol::Id;
use rusqlite::{Connection, params};

use super::SqliteStore;
use super::rows::{id_col, internal};
use super::writer::in_savepoint;
use crate::store::sql_integers::id_to_sql;
use crate::store::{ContactEntry, Contacts, StoreError, StoreResult, friends_sql};

fn user_exists(conn: &Connection, user: Id) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id_to_sql(user)]))
        .map_err(internal)
}

fn has_contact(conn: &Connection, owner: Id, contact: Id) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM contacts WHERE owner = ?1 AND contact = ?2")
        .and_then(|mut s| s.exists(params![id_to_sql(owner), id_to_sql(contact)]))
        .map_err(internal)
}

pub(super) fn friends_in(conn: &Connection, user: Id) -> StoreResult<Vec<Id>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.contact FROM contacts c
             JOIN contacts r ON r.owner = c.contact AND r.contact = c.owner
             WHERE c.owner = ?1
               AND NOT EXISTS (SELECT 1 FROM blocks b
                               WHERE (b.owner = ?1 AND b.blocked = c.contact)
                                  OR (b.owner = c.contact AND b.blocked = ?1))",
        )
        .map_err(internal)?;
    let rows = stmt
        .query_map(params![id_to_sql(user)], |r| id_col(r, 0))
        .map_err(internal)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(internal)
}

#[async_trait]
impl Contacts for SqliteStore {
    async fn add_contact(&self, owner: Id, contact: Id, now: i64) -> StoreResult<bool> {
        self.write(move |conn| {
            if !user_exists(conn, contact)? {
                return Err(StoreError::NotFound(format!("no user {contact}")));
            }
            conn.prepare_cached(
                "INSERT INTO contacts (owner, contact, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id_to_sql(owner), id_to_sql(contact), now]))
            .map_err(internal)?;
            has_contact(conn, contact, owner)
        })
        .await
    }

    async fn remove_contact(&self, owner: Id, contact: Id) -> StoreResult<bool> {
        self.write(move |conn| {
            let removed = conn
                .prepare_cached("DELETE FROM contacts WHERE owner = ?1 AND contact = ?2")
                .and_then(|mut s| s.execute(params![id_to_sql(owner), id_to_sql(contact)]))
                .map_err(internal)?;
            Ok(removed > 0 && has_contact(conn, contact, owner)?)
        })
        .await
    }

    async fn contacts(&self, owner: Id) -> StoreResult<Vec<ContactEntry>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT c.contact, u.username,
                            EXISTS (SELECT 1 FROM contacts r
                                    WHERE r.owner = c.contact AND r.contact = c.owner),
                            EXISTS (SELECT 1 FROM blocks b
                                    WHERE (b.owner = c.owner AND b.blocked = c.contact)
                                       OR (b.owner = c.contact AND b.blocked = c.owner)),
                            u.last_seen
                     FROM contacts c JOIN users u ON u.id = c.contact
                     WHERE c.owner = ?1 ORDER BY u.username_key",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map(params![id_to_sql(owner)], |r| {
                    Ok(ContactEntry {
                        user_id: id_col(r, 0)?,
                        username: r.get(1)?,
                        mutual: r.get(2)?,
                        blocked: r.get(3)?,
                        last_seen: r.get(4)?,
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(internal)
        })
        .await
    }

    async fn friends(&self, user: Id) -> StoreResult<Vec<Id>> {
        self.read(move |conn| friends_in(conn, user)).await
    }

    async fn set_block(&self, owner: Id, other: Id, blocked: bool, now: i64) -> StoreResult<()> {
        self.write_raw(move |w| {
            if blocked {
                w.note_blocker(owner);
            }
            in_savepoint(&w.conn, |conn| {
                if !user_exists(conn, other)? {
                    return Err(StoreError::NotFound(format!("no user {other}")));
                }
                let sql = if blocked {
                    "INSERT INTO blocks (owner, blocked, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING"
                } else {
                    "DELETE FROM blocks WHERE owner = ?1 AND blocked = ?2 AND ?3 = ?3"
                };
                conn.prepare_cached(sql)
                    .and_then(|mut s| s.execute(params![id_to_sql(owner), id_to_sql(other), now]))
                    .map_err(internal)?;
                Ok(())
            })
        })
        .await
    }

    async fn blocked_between(&self, a: Id, b: Id) -> StoreResult<bool> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM blocks WHERE (owner = ?1 AND blocked = ?2)
                                         OR (owner = ?2 AND blocked = ?1)",
            )
            .and_then(|mut s| s.exists(params![id_to_sql(a), id_to_sql(b)]))
            .map_err(internal)
        })
        .await
    }

    async fn are_friends(&self, a: Id, b: Id) -> StoreResult<bool> {
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {}", friends_sql("?1", "?2")))
                .and_then(|mut s| s.query_row(params![id_to_sql(a), id_to_sql(b)], |r| r.get(0)))
                .map_err(internal)
        })
        .await
    }

    async fn set_last_seen(&self, user: Id, ts: i64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached("UPDATE users SET last_seen = max(last_seen, ?2) WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id_to_sql(user), ts]))
                .map_err(internal)?;
            Ok(())
        })
        .await
    }
}
