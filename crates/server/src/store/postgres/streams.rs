//! [`Streams`] on PostgreSQL: the append and the ack, each one call of a function of migration
//! 2, and the catch-up reads. Positions come from row locks, not from any node's memory, so
//! they stay gapless and in commit order with several writers.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use confab_protocol::Id;
use deadpool_postgres::GenericClient;

use super::PostgresStore;
use super::retry::{Failure, classify};
use super::rows::{
    MESSAGE_COLUMNS, id_col, is_unique_violation, message_from_row, query, query_one, query_opt,
    text_message_from_row, u64_col,
};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};
use crate::store::{
    Appended, DeliveredAdvance, NewMessage, StoreError, StoreResult, StreamEntry, Streams,
    conversation_id, friends_sql,
};

/// SQLSTATE of `confab_append`'s "no such user" (migration 2).
const NO_SUCH_USER: &str = "CF404";

/// The append: one call of `confab_append_notify` (migration 8: `confab_append` of migration
/// 2, then the push intent), a transaction of its own.
///
/// Stream positions must be assigned in commit order: a device that has read position `p+1`
/// must never later find a `p` that committed after it (catch-up would skip it forever). An
/// id or a timestamp gives no such order across nodes: a transaction can take a lower one and
/// commit after a higher one. So the position is taken from the user's row,
/// `UPDATE users SET stream_head = stream_head + 1 … RETURNING stream_head`, in the append's
/// transaction: the row lock is held until commit, so the transaction that gets `p+1` waits
/// until the one holding `p` has committed (or rolled back, and then `p` is reused: no gap).
/// PostgreSQL makes a commit visible before it releases its locks, so any snapshot that sees
/// `p+1` also sees `p`.
///
/// Each append locks two user rows (sender and recipient). Always lock the lower id first:
/// if a→b locked a then b while b→a locked b then a, each would wait for the other
/// (a deadlock, which PostgreSQL would break by failing one of them after a second).
/// The conversation row is locked after both, so every append takes its locks in one global
/// order: users ascending, then the conversation.
///
/// The function runs these steps server-side because each statement sent from here costs a
/// round trip and PostgreSQL's per-statement work: as a client-side transaction of eight
/// statements a node stored a fraction as much (docs/benchmarks/history.md has the runs).
pub(super) async fn append_in(c: &impl GenericClient, m: &NewMessage) -> Result<Appended, Failure> {
    let (from, to) = (id_to_sql(m.from), id_to_sql(m.to));
    let (lo, hi) = if m.from <= m.to {
        (from, to)
    } else {
        (to, from)
    };
    let conversation = conversation_id(m.from, m.to);
    let row = query_one(
        c,
        "SELECT * FROM confab_append_notify($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &id_to_sql(m.id),
            &from,
            &to,
            &conversation,
            &lo,
            &hi,
            &m.client_id,
            &m.body,
            &m.ts,
        ],
    )
    .await
    .map_err(|e| match e.as_db_error() {
        Some(d) if d.code().code() == NO_SUCH_USER => {
            Failure::Final(StoreError::NotFound(d.message().to_owned()))
        }
        // Another node stored the same (sender, client_id) between the function's lookup and
        // its insert, which rolled the call back: the next attempt finds the stored message.
        _ if is_unique_violation(&e, Some("messages_sender_client_id")) => Failure::Retry(
            StoreError::Conflict("(sender, client_id) stored concurrently".into()),
        ),
        _ => classify(&e),
    })?;
    let status: &str = row.try_get(0)?;
    match status {
        "blocked" => Err(Failure::Final(StoreError::Forbidden(
            "the recipient does not accept your messages".into(),
        ))),
        "duplicate" => Ok(Appended::duplicate(text_message_from_row(&row, 1)?)),
        "stored" => Ok(Appended {
            message: Arc::new(text_message_from_row(&row, 1)?),
            sender_pos: u64_col(&row, 8)?,
            recipient_pos: u64_col(&row, 9)?,
            duplicate: false,
            notify: row.try_get(10)?,
        }),
        other => Err(Failure::Final(StoreError::Internal(format!(
            "confab_append_notify answered {other:?}"
        )))),
    }
}

/// An ack: one call of `confab_set_cursor` (migration 2), a transaction of its own.
///
/// The cursor never passes the user's stream head, and the delivered marks advance for the
/// conversations whose messages the newly acknowledged range holds. Those are updated one
/// statement per conversation, in id order: another device of this user acking at the same
/// time locks the same rows in the same order (no deadlock), and its update sees ours and does
/// not advance the mark a second time.
/// An ack: `confab_set_cursor`'s advances, each with whether the acknowledging user and the
/// sender are friends. Made once.
static SET_CURSOR_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT a.o_conversation, a.o_peer, a.o_seq, {}
         FROM confab_set_cursor($1, $2) a",
        friends_sql(
            "(SELECT d.user_id FROM devices d WHERE d.id = $1)",
            "a.o_peer"
        )
    )
});

pub(super) async fn set_cursor_in(
    c: &impl GenericClient,
    device: Id,
    pos: u64,
) -> Result<Vec<DeliveredAdvance>, Failure> {
    // Whether the sender is a friend is read in the same statement, after the function's
    // writes: no second round trip per ack, and no new version of the function to migrate.
    let rows = query(
        c,
        &SET_CURSOR_SQL,
        &[&id_to_sql(device), &count_to_sql(pos)],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeliveredAdvance {
                conversation: row.try_get(0)?,
                peer: id_col(row, 1)?,
                seq: u64_col(row, 2)?,
                friends: row.try_get(3)?,
            })
        })
        .collect()
}

#[async_trait]
impl Streams for PostgresStore {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        // A connection lost mid-call leaves the outcome unknown, and the call is retried
        // anyway: it is idempotent, a retry of a stored message finds it by its `client_id`
        // and answers it as a duplicate.
        self.run(move |c| {
            let m = message.clone();
            Box::pin(async move { append_in(c, &m).await })
        })
        .await
    }

    async fn stream_head(&self, user: Id) -> StoreResult<u64> {
        self.run(move |c| {
            Box::pin(async move {
                match query_opt(
                    c,
                    "SELECT stream_head FROM users WHERE id = $1",
                    &[&id_to_sql(user)],
                )
                .await?
                {
                    Some(r) => Ok(u64_col(&r, 0)?),
                    None => Ok(0),
                }
            })
        })
        .await
    }

    async fn stream_after(
        &self,
        user: Id,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    &format!(
                        "SELECT s.pos, {MESSAGE_COLUMNS} FROM stream s
                         JOIN messages m ON m.id = s.message_id
                         WHERE s.user_id = $1 AND s.pos > $2 ORDER BY s.pos LIMIT $3"
                    ),
                    &[&id_to_sql(user), &count_to_sql(after), &limit_to_sql(limit)],
                )
                .await?;
                let mut entries = Vec::with_capacity(rows.len());
                for r in rows {
                    entries.push(StreamEntry {
                        pos: u64_col(&r, 0)?,
                        message: message_from_row(&r, 1)?,
                    });
                }
                Ok(entries)
            })
        })
        .await
    }

    async fn set_cursor(&self, device_id: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>> {
        // Retried like `append`: a repeated ack finds the cursor already moved and changes
        // nothing.
        self.run(move |c| Box::pin(set_cursor_in(c, device_id, pos)))
            .await
    }
}
