//! Pending notifications on the writer: the settle's rules applied to rows, claimed rows
//! made into due notifications, and each outcome recorded for the version claimed.

use confab_protocol::{Id, group_of};
use rusqlite::{Connection, OptionalExtension, params};

use super::super::rows::{id_col, internal};
use super::{bad_row, forget_devices};
use crate::store::StoreResult;
use crate::store::push::rules::{Room, Slot};
use crate::store::push::{Due, DueKind, NewPending, Outcome, PendingKind, PushTarget, Settled};
use crate::store::sql_integers::{id_from_sql, id_to_sql};

/// The next version of a pending row (see the schema's migration 7).
fn next_version(conn: &Connection) -> StoreResult<i64> {
    conn.prepare_cached(
        "UPDATE push_versions SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .and_then(|mut s| s.query_row([], |r| r.get(0)))
    .map_err(internal)
}

/// Applies one new pending notification by the shared rules (`store::push::rules`).
pub(super) fn settle_one(
    conn: &Connection,
    p: &NewPending,
    room: &mut Room,
    now: i64,
    settled: &mut Settled,
) -> StoreResult<()> {
    let device = id_to_sql(p.target.device);
    // A device whose subscription went since the claim gets nothing: the row would never go.
    let subscribed = conn
        .prepare_cached("SELECT 1 FROM push_subscriptions WHERE device_id = ?1")
        .and_then(|mut s| s.exists(params![device]))
        .map_err(internal)?;
    if !subscribed {
        return Ok(());
    }
    let before = conn
        .prepare_cached(
            "SELECT kind, message_id, seq, state, shown_seq, lease_until, created_at, user_id
             FROM push_pending WHERE device_id = ?1 AND conversation = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![device, p.conversation], |r| {
                let seq: u64 = r.get(2)?;
                let kind = match r.get::<_, Option<i64>>(1)? {
                    Some(message) if r.get::<_, String>(0)? == "message" => PendingKind::Message {
                        message: id_from_sql(message),
                        seq,
                    },
                    _ => PendingKind::Read { seq },
                };
                Ok(Slot {
                    user: id_col(r, 7)?,
                    kind,
                    due: r.get::<_, String>(3)? == "due",
                    shown_seq: r.get(4)?,
                    in_flight: r.get::<_, i64>(5)? > now,
                    created_at: r.get(6)?,
                    changed: false,
                })
            })
            .optional()
        })
        .map_err(internal)?;
    let existed = before.is_some();
    let mut slot = before;
    Slot::apply(&mut slot, p.target.user, p.kind, p.created_at, room).count(settled);
    let (kind, message, seq) = match slot.as_ref().map(|s| s.kind) {
        Some(PendingKind::Message { message, seq }) => ("message", Some(id_to_sql(message)), seq),
        Some(PendingKind::Read { seq }) => ("read", None, seq),
        None => ("", None, 0),
    };
    match (existed, &slot) {
        (true, None) => {
            conn.prepare_cached(
                "DELETE FROM push_pending WHERE device_id = ?1 AND conversation = ?2",
            )
            .and_then(|mut s| s.execute(params![device, p.conversation]))
            .map_err(internal)?;
        }
        (false, Some(made)) => {
            let version = next_version(conn)?;
            conn.prepare_cached(
                "INSERT INTO push_pending (device_id, conversation, user_id, kind, message_id, seq,
                                           state, version, next_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'due', ?7, ?8, ?9)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    device,
                    p.conversation,
                    id_to_sql(made.user),
                    kind,
                    message,
                    seq,
                    version,
                    now,
                    made.created_at
                ])
            })
            .map_err(internal)?;
        }
        (true, Some(changed)) if changed.changed => {
            // Due with its new content: a shown row at once, a due one keeping its retry time
            // and count (the push service's backoff holds for the newer content too) and its
            // lease (one in flight is sent again after its finish).
            let version = next_version(conn)?;
            conn.prepare_cached(
                "UPDATE push_pending SET kind = ?3, message_id = ?4, seq = ?5, created_at = ?6,
                     version = ?7,
                     next_at = CASE WHEN state = 'due' THEN next_at ELSE ?8 END,
                     attempts = CASE WHEN state = 'due' THEN attempts ELSE 0 END,
                     state = 'due'
                 WHERE device_id = ?1 AND conversation = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![
                    device,
                    p.conversation,
                    kind,
                    message,
                    seq,
                    changed.created_at,
                    version,
                    now
                ])
            })
            .map_err(internal)?;
        }
        _ => {}
    }
    Ok(())
}

/// A claimed pending row before its payload's data is read.
pub(super) struct Claimed {
    pub(super) target: PushTarget,
    pub(super) conversation: String,
    pub(super) read: bool,
    pub(super) message: Option<Id>,
    pub(super) seq: u64,
    pub(super) version: u64,
    pub(super) attempts: u32,
    pub(super) created_at: i64,
}

/// A claimed row with its subscription and payload's data; `None` (and the row deleted) if
/// the subscription or the message is gone.
pub(super) fn hydrate(conn: &Connection, c: Claimed) -> StoreResult<Option<Due>> {
    let device = id_to_sql(c.target.device);
    let subscription: Option<(i64, String)> = conn
        .prepare_cached("SELECT id, data FROM push_subscriptions WHERE device_id = ?1")
        .and_then(|mut s| {
            s.query_row(params![device], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(internal)?;
    let what = match (c.read, c.message) {
        (true, _) => Some(DueKind::Read { seq: c.seq }),
        (false, Some(message)) => message_data(conn, message, &c.conversation, c.target.user)?,
        (false, None) => None,
    };
    let (Some((subscription_id, data)), Some(what)) = (subscription, what) else {
        conn.prepare_cached("DELETE FROM push_pending WHERE device_id = ?1 AND conversation = ?2")
            .and_then(|mut s| s.execute(params![device, c.conversation]))
            .map_err(internal)?;
        return Ok(None);
    };
    Ok(Some(Due {
        target: c.target,
        conversation: c.conversation,
        version: c.version,
        attempts: c.attempts,
        created_at: c.created_at,
        subscription_id: id_from_sql(subscription_id),
        subscription: serde_json::from_str(&data).map_err(bad_row)?,
        what,
    }))
}

/// A message's notification data for `user`: its sender, text and the unread count.
fn message_data(
    conn: &Connection,
    message: Id,
    conversation: &str,
    user: Id,
) -> StoreResult<Option<DueKind>> {
    let row: Option<(u64, Id, String, String)> = conn
        .prepare_cached(
            "SELECT m.seq, m.sender, m.body, u.username
             FROM messages m JOIN users u ON u.id = m.sender WHERE m.id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![id_to_sql(message)], |r| {
                Ok((r.get(0)?, id_col(r, 1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((seq, from, body, from_username)) = row else {
        return Ok(None);
    };
    // The conversation's last seq and the user's read mark in it.
    let marks: Option<(u64, u64)> = match group_of(conversation) {
        Some(group) => conn
            .prepare_cached(
                "SELECT (SELECT max(seq) FROM messages WHERE conversation = ?1),
                        max(read_seq, from_seq)
                 FROM group_members WHERE group_id = ?2 AND user_id = ?3
                 ORDER BY from_seq DESC LIMIT 1",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![conversation, id_to_sql(group), id_to_sql(user)],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            }),
        None => conn
            .prepare_cached(
                "SELECT (SELECT max(seq) FROM messages WHERE conversation = ?1),
                        CASE WHEN user_lo = ?2 THEN read_lo ELSE read_hi END
                 FROM conversations WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![conversation, id_to_sql(user)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            }),
    }
    .map_err(internal)?;
    let unread = marks.map_or(1, |(last, read)| last.saturating_sub(read).max(1));
    Ok(Some(DueKind::Message {
        id: message,
        seq,
        from,
        from_username,
        body,
        unread,
    }))
}

pub(super) fn finish_in(conn: &Connection, due: &Due, outcome: Outcome) -> StoreResult<()> {
    let device = id_to_sql(due.target.device);
    let version = i64::try_from(due.version).unwrap_or(i64::MAX);
    let run = |sql: &str, extra: &[&dyn rusqlite::ToSql]| -> StoreResult<usize> {
        let key: [&dyn rusqlite::ToSql; 3] = [&device, &due.conversation, &version];
        let all: Vec<&dyn rusqlite::ToSql> = key.iter().chain(extra).copied().collect();
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(all.as_slice()))
            .map_err(internal)
    };
    // Each outcome applies to the version claimed; a row changed since (newer content) is
    // only released, so it is sent next.
    let release = "UPDATE push_pending SET lease_until = 0
                   WHERE device_id = ?1 AND conversation = ?2 AND version <> ?3";
    match (outcome, &due.what) {
        (Outcome::Sent, DueKind::Message { seq, .. }) => {
            let next = next_version(conn)?;
            run(
                "UPDATE push_pending SET
                     state = CASE WHEN version = ?3 THEN 'shown' ELSE state END,
                     attempts = CASE WHEN version = ?3 THEN 0 ELSE attempts END,
                     version = CASE WHEN version = ?3 THEN ?5 ELSE version END,
                     shown_seq = max(shown_seq, ?4),
                     lease_until = 0
                 WHERE device_id = ?1 AND conversation = ?2",
                &[seq, &next],
            )?;
        }
        (Outcome::Sent, DueKind::Read { .. }) | (Outcome::Dropped, _) => {
            run(
                "DELETE FROM push_pending
                 WHERE device_id = ?1 AND conversation = ?2 AND version = ?3",
                &[],
            )?;
            run(release, &[])?;
        }
        (Outcome::Retry { at, attempts }, _) => {
            run(
                "UPDATE push_pending SET
                     next_at = CASE WHEN version = ?3 THEN ?4 ELSE next_at END,
                     attempts = CASE WHEN version = ?3 THEN ?5 ELSE attempts END,
                     lease_until = 0
                 WHERE device_id = ?1 AND conversation = ?2",
                &[&at, &attempts],
            )?;
        }
        (Outcome::Gone, _) => {
            let deleted = conn
                .prepare_cached("DELETE FROM push_subscriptions WHERE device_id = ?1 AND id = ?2")
                .and_then(|mut s| s.execute(params![device, id_to_sql(due.subscription_id)]))
                .map_err(internal)?;
            if deleted > 0 {
                forget_devices(conn, &[due.target.device])?;
            } else {
                // A newer subscription replaced the one found gone: send to that one.
                run(
                    "UPDATE push_pending SET lease_until = 0
                     WHERE device_id = ?1 AND conversation = ?2 AND ?3 = ?3",
                    &[],
                )?;
            }
        }
    }
    Ok(())
}
