//! Appending a message, the hot path. It runs on the writer without a savepoint of its own, so
//! it is written to refuse a message before its first change, or else to poison the batch.

use std::sync::Arc;

use confab_protocol::{Id, Message};
use rusqlite::{Connection, OptionalExtension, params};

use super::push::insert_message_intent;
use super::rows::{MESSAGE_COLUMNS, internal, is_unique_violation, message_from_row};
use super::writer::Writer;
use crate::store::sql_integers::id_to_sql;
use crate::store::{Appended, NewMessage, StoreError, StoreResult, conversation_id};

/// The message `sender` already sent with `client_id`, if any.
pub(super) fn find_sent(
    conn: &Connection,
    sender: Id,
    client_id: &str,
) -> StoreResult<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.sender = ?1 AND m.client_id = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![id_to_sql(sender), client_id], |r| {
            message_from_row(r, 0)
        })
        .optional()
    })
    .map_err(internal)
}

/// Appends one message without a savepoint: everything that can refuse it (a block, an
/// unknown user) is checked before the first change, and a failure after it poisons the
/// batch. A repeated `client_id` is found by the message insert itself (its unique key), so
/// the common case of a new message pays for no lookup.
pub(super) fn append_in(w: &mut Writer, m: NewMessage) -> StoreResult<Appended> {
    if w.may_block(m.to)? {
        let blocked = w
            .conn
            .prepare_cached("SELECT 1 FROM blocks WHERE owner = ?1 AND blocked = ?2")
            .and_then(|mut s| s.exists(params![id_to_sql(m.to), id_to_sql(m.from)]))
            .map_err(internal)?;
        if blocked {
            // A retry of a message stored before the block still gets its original answer.
            if let Some(message) = find_sent(&w.conn, m.from, &m.client_id)? {
                return Ok(Appended::duplicate(message));
            }
            return Err(StoreError::Forbidden(
                "the recipient does not accept your messages".into(),
            ));
        }
    }
    // Read before the first change, which a failure after would poison.
    let notify = w.may_push(m.to)?;
    let recipient_pos = w
        .head(m.to)?
        .ok_or_else(|| StoreError::NotFound(format!("no user {}", m.to)))?
        + 1;
    let sender_pos = w
        .head(m.from)?
        .ok_or_else(|| StoreError::NotFound(format!("no user {}", m.from)))?
        + 1;
    let conversation = conversation_id(m.from, m.to);
    let (lo, hi) = if m.from <= m.to {
        (m.from, m.to)
    } else {
        (m.to, m.from)
    };
    let seq = match w.last_seq(&conversation)? {
        Some(last) => last + 1,
        None => {
            // A repeated `client_id` is caught by the insert below, but that comes after this
            // conversation's row is made, a change it could not undo: so the first message of
            // a conversation checks for one first.
            if let Some(message) = find_sent(&w.conn, m.from, &m.client_id)? {
                return Ok(Appended::duplicate(message));
            }
            // The first change; from here on a failure poisons the batch.
            let created = w
                .conn
                .prepare_cached(
                    "INSERT INTO conversations (id, user_lo, user_hi) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![conversation, id_to_sql(lo), id_to_sql(hi)]));
            if let Err(e) = created {
                w.poisoned = true;
                return Err(internal(e));
            }
            1
        }
    };
    // `OR FAIL` rather than the default `ABORT`: SQLite then keeps no statement journal (a
    // copy of each page the statement changes, so that a half-done statement can be undone).
    // Neither insert needs one: a row's constraints are all checked before it is written, so
    // a refused message changes nothing, and a failure between the two stream rows poisons
    // the batch anyway.
    let inserted = w
        .conn
        .prepare_cached(
            "INSERT OR FAIL INTO messages
                 (id, conversation, seq, sender, recipient, client_id, body, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id_to_sql(m.id),
                conversation,
                seq,
                id_to_sql(m.from),
                id_to_sql(m.to),
                m.client_id,
                m.body,
                m.ts
            ])
        });
    if let Err(e) = inserted {
        // The unique key refused the row before anything was written: the batch is clean.
        if is_unique_violation(&e)
            && let Some(message) = find_sent(&w.conn, m.from, &m.client_id)?
        {
            return Ok(Appended::duplicate(message));
        }
        w.poisoned = true;
        return Err(internal(e));
    }
    let streamed = w
        .conn
        .prepare_cached(
            "INSERT OR FAIL INTO stream (user_id, pos, message_id)
             VALUES (?1, ?2, ?5), (?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id_to_sql(m.to),
                recipient_pos,
                id_to_sql(m.from),
                sender_pos,
                id_to_sql(m.id)
            ])
        });
    if let Err(e) = streamed {
        w.poisoned = true;
        return Err(internal(e));
    }
    if notify && let Err(e) = insert_message_intent(&w.conn, &conversation, m.id, seq, m.from, m.ts)
    {
        w.poisoned = true;
        return Err(internal(e));
    }
    w.heads.insert(id_to_sql(m.to), recipient_pos);
    w.heads.insert(id_to_sql(m.from), sender_pos);
    w.seqs.insert(conversation.clone(), seq);
    Ok(Appended {
        message: Arc::new(Message {
            id: m.id,
            conversation,
            seq,
            from: m.from,
            to: Some(m.to),
            body: m.body,
            system: None,
            ts: m.ts,
        }),
        sender_pos,
        recipient_pos,
        duplicate: false,
        notify,
    })
}
