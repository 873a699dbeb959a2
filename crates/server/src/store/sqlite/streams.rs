//! [`Streams`] on SQLite: the append (see [`append_in`]), catch-up reads and the devices'
//! cursors with the delivered marks they move.

use std::sync::LazyLock;

use async_trait::async_trait;
use confab_protocol::Id;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::append::append_in;
use super::rows::{MESSAGE_COLUMNS, id_col, internal, message_from_row};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};
use crate::store::{
    Appended, DeliveredAdvance, NewMessage, StoreResult, StreamEntry, Streams, friends_sql,
};

/// The highest received seq per conversation in an acknowledged range, and whether the sender
/// is a friend. Made once: every ack looks its statement up by this text.
static RECEIVED_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT m.conversation, m.sender, max(m.seq), {} FROM stream s
         JOIN messages m ON m.id = s.message_id
         WHERE s.user_id = ?1 AND s.pos > ?2 AND s.pos <= ?3 AND m.recipient = ?1
         GROUP BY m.conversation, m.sender",
        friends_sql("?1", "m.sender")
    )
});

/// An ack, in the writer's transaction: see [`Streams::set_cursor`].
fn set_cursor_in(conn: &Connection, device: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>> {
    let row: Option<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT d.user_id, d.cursor,
                    coalesce((SELECT max(pos) FROM stream WHERE user_id = d.user_id), 0)
             FROM devices d WHERE d.id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![id_to_sql(device)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((user, old, head)) = row else {
        return Ok(Vec::new());
    };
    let new = count_to_sql(pos).min(head);
    if new <= old {
        return Ok(Vec::new());
    }
    conn.prepare_cached("UPDATE devices SET cursor = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id_to_sql(device), new]))
        .map_err(internal)?;
    let received: Vec<(String, Id, u64, bool)> = conn
        .prepare_cached(&RECEIVED_SQL)
        .and_then(|mut s| {
            s.query_map(params![user, old, new], |r| {
                Ok((r.get(0)?, id_col(r, 1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    let mut advanced = Vec::new();
    let mut bump = conn
        .prepare_cached(
            "UPDATE conversations SET
                delivered_lo = CASE WHEN user_lo = ?3 THEN max(delivered_lo, ?2) ELSE delivered_lo END,
                delivered_hi = CASE WHEN user_hi = ?3 THEN max(delivered_hi, ?2) ELSE delivered_hi END
             WHERE id = ?1 AND ((user_lo = ?3 AND delivered_lo < ?2)
                             OR (user_hi = ?3 AND delivered_hi < ?2))",
        )
        .map_err(internal)?;
    for (conversation, sender, seq, friends) in received {
        if bump
            .execute(params![conversation, seq, user])
            .map_err(internal)?
            > 0
        {
            advanced.push(DeliveredAdvance {
                conversation,
                peer: sender,
                seq,
                friends,
            });
        }
    }
    Ok(advanced)
}

pub(super) fn stream_head_in(conn: &Connection, user: Id) -> StoreResult<u64> {
    conn.prepare_cached("SELECT max(pos) FROM stream WHERE user_id = ?1")
        .and_then(|mut s| s.query_row(params![id_to_sql(user)], |r| r.get::<_, Option<u64>>(0)))
        .map(|v| v.unwrap_or(0))
        .map_err(internal)
}

/// Stream entries after `after`. The statement must not be prepared again for each new
/// binding (parsing and planning it again was a quarter of the server's CPU during a burst of
/// logins): the connections keep their plans (`connections::stable_plans`), and every bound
/// `LIMIT` of this store's reads is written `LIMIT +?n`, an expression SQLite does not plan
/// with the bound value.
pub(super) fn stream_after_in(
    conn: &Connection,
    user: Id,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<StreamEntry>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT s.pos, {MESSAGE_COLUMNS} FROM stream s
             JOIN messages m ON m.id = s.message_id
             WHERE s.user_id = ?1 AND s.pos > ?2 ORDER BY s.pos LIMIT +?3"
        ))
        .map_err(internal)?;
    let rows = stmt
        .query_map(
            params![id_to_sql(user), count_to_sql(after), limit_to_sql(limit)],
            |r| {
                Ok(StreamEntry {
                    pos: r.get(0)?,
                    message: message_from_row(r, 1)?,
                })
            },
        )
        .map_err(internal)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(internal)
}

#[async_trait]
impl Streams for SqliteStore {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        self.write_raw(move |w| append_in(w, message)).await
    }

    async fn stream_head(&self, user: Id) -> StoreResult<u64> {
        self.read(move |conn| stream_head_in(conn, user)).await
    }

    async fn stream_after(
        &self,
        user: Id,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        self.read(move |conn| stream_after_in(conn, user, after, limit))
            .await
    }

    async fn set_cursor(&self, device_id: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>> {
        self.write(move |conn| set_cursor_in(conn, device_id, pos))
            .await
    }
}
