//! Push state in the embedded store (`store::push`): every write on the writer, so an intent
//! commits with its message; reads on the pool.

use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{Id, PushSubscription, conversation_members, group_of};
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::rows::{id_col, internal};
use super::writer::in_savepoint;
use crate::store::push::rules::{Room, Slot};
use crate::store::push::{
    Backlog, Due, DueKind, Intent, NewPending, OutboxEntry, Outcome, PendingKind, Push, PushTarget,
    Settled,
};
use crate::store::sql_integers::{id_from_sql, id_to_sql, limit_to_sql};
use crate::store::{StoreError, StoreResult};

/// Writes the intent to notify of a message, in the message's transaction. The caller has
/// checked that a recipient may have a subscription (`Writer::may_push`).
pub(super) fn insert_message_intent(
    conn: &Connection,
    conversation: &str,
    message: Id,
    seq: u64,
    sender: Id,
    ts: i64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO push_outbox (conversation, kind, message_id, seq, user_id, created_at)
         VALUES (?1, 'message', ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| {
        s.execute(params![
            conversation,
            id_to_sql(message),
            seq,
            id_to_sql(sender),
            ts
        ])
    })
}

/// Deletes the subscriptions and pending notifications of devices being revoked, in the
/// revocation's transaction.
pub(super) fn forget_devices(conn: &Connection, devices: &[Id]) -> StoreResult<()> {
    for device in devices {
        for sql in [
            "DELETE FROM push_subscriptions WHERE device_id = ?1",
            "DELETE FROM push_pending WHERE device_id = ?1",
        ] {
            conn.prepare_cached(sql)
                .and_then(|mut s| s.execute(params![id_to_sql(*device)]))
                .map_err(internal)?;
        }
    }
    Ok(())
}

/// Ends every claim (see `SqliteStore::open`).
pub(super) fn release_leases(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(
        "UPDATE push_outbox SET lease_until = 0 WHERE lease_until > 0;
         UPDATE push_pending SET lease_until = 0 WHERE lease_until > 0;",
    )
    .map_err(internal)
}

fn lease_end(now: i64, lease: Duration) -> i64 {
    now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

fn bad_row(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("malformed push row: {e}"))
}

#[async_trait]
impl Push for SqliteStore {
    async fn set_subscription(
        &self,
        user: Id,
        device: Id,
        id: Id,
        subscription: &PushSubscription,
        now: i64,
    ) -> StoreResult<()> {
        let data = serde_json::to_string(subscription).map_err(bad_row)?;
        let kind = subscription.kind().as_str();
        self.write_raw(move |w| {
            w.note_push_user(user);
            in_savepoint(&w.conn, |conn| {
                let live = conn
                    .prepare_cached(
                        "SELECT 1 FROM devices WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                    )
                    .and_then(|mut s| s.exists(params![id_to_sql(device), id_to_sql(user)]))
                    .map_err(internal)?;
                if !live {
                    return Err(StoreError::NotFound("no such device".into()));
                }
                conn.prepare_cached(
                    "INSERT INTO push_subscriptions (device_id, user_id, id, kind, data, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (device_id) DO UPDATE SET user_id = excluded.user_id,
                         id = excluded.id, kind = excluded.kind, data = excluded.data,
                         created_at = excluded.created_at",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        id_to_sql(device),
                        id_to_sql(user),
                        id_to_sql(id),
                        kind,
                        data,
                        now
                    ])
                })
                .map(|_| ())
                .map_err(internal)
            })
        })
        .await
    }

    async fn subscription(&self, device: Id) -> StoreResult<Option<PushSubscription>> {
        self.read(move |conn| {
            let data: Option<String> = conn
                .prepare_cached("SELECT data FROM push_subscriptions WHERE device_id = ?1")
                .and_then(|mut s| {
                    s.query_row(params![id_to_sql(device)], |r| r.get(0))
                        .optional()
                })
                .map_err(internal)?;
            data.map(|d| serde_json::from_str(&d).map_err(bad_row))
                .transpose()
        })
        .await
    }

    async fn delete_subscription(&self, device: Id) -> StoreResult<()> {
        self.write(move |conn| forget_devices(conn, &[device]))
            .await
    }

    async fn record_read(
        &self,
        user: Id,
        device: Id,
        conversation: &str,
        seq: u64,
        now: i64,
    ) -> StoreResult<()> {
        let conversation = conversation.to_owned();
        self.write_raw(move |w| {
            if !w.may_push(user)? {
                return Ok(());
            }
            in_savepoint(&w.conn, |conn| {
                conn.prepare_cached(
                    "INSERT INTO push_outbox (conversation, kind, seq, user_id, device_id, created_at)
                     SELECT ?1, 'read', ?2, ?3, ?4, ?5
                     WHERE EXISTS (SELECT 1 FROM push_subscriptions
                                   WHERE user_id = ?3 AND device_id <> ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        conversation,
                        seq,
                        id_to_sql(user),
                        id_to_sql(device),
                        now
                    ])
                })
                .map(|_| ())
                .map_err(internal)
            })
        })
        .await
    }

    async fn claim_outbox(
        &self,
        now: i64,
        lease: Duration,
        limit: usize,
    ) -> StoreResult<Vec<OutboxEntry>> {
        let until = lease_end(now, lease);
        self.write(move |conn| {
            let mut entries = conn
                .prepare_cached(
                    "UPDATE push_outbox SET lease_until = ?2
                     WHERE id IN (SELECT id FROM push_outbox WHERE lease_until <= ?1
                                  ORDER BY id LIMIT ?3)
                     RETURNING id, conversation, kind, message_id, seq, user_id, device_id,
                               created_at",
                )
                .and_then(|mut s| {
                    s.query_map(params![now, until, limit_to_sql(limit)], |r| {
                        let kind: String = r.get(2)?;
                        let user = id_col(r, 5)?;
                        let seq: u64 = r.get(4)?;
                        let intent = if kind == "read" {
                            Intent::Read {
                                user,
                                device: r.get::<_, Option<i64>>(6)?.map_or(Id(0), id_from_sql),
                                seq,
                            }
                        } else {
                            Intent::Message {
                                message: r.get::<_, Option<i64>>(3)?.map_or(Id(0), id_from_sql),
                                seq,
                                sender: user,
                            }
                        };
                        Ok(OutboxEntry {
                            id: r.get(0)?,
                            conversation: r.get(1)?,
                            intent,
                            created_at: r.get(7)?,
                            targets: Vec::new(),
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(internal)?;
            entries.sort_by_key(|e| e.id);
            for entry in &mut entries {
                entry.targets = targets(conn, &entry.conversation, &entry.intent)?;
            }
            Ok(entries)
        })
        .await
    }

    async fn settle_outbox(
        &self,
        done: Vec<u64>,
        pending: Vec<NewPending>,
        max_pending: u64,
        now: i64,
    ) -> StoreResult<Settled> {
        self.write(move |conn| {
            for id in &done {
                conn.prepare_cached("DELETE FROM push_outbox WHERE id = ?1")
                    .and_then(|mut s| s.execute(params![id]))
                    .map_err(internal)?;
            }
            let due: u64 = conn
                .prepare_cached("SELECT count(*) FROM push_pending WHERE state = 'due'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(internal)?;
            let mut room = Room {
                due,
                max: max_pending,
            };
            let mut settled = Settled::default();
            for p in &pending {
                settle_one(conn, p, &mut room, now, &mut settled)?;
            }
            Ok(settled)
        })
        .await
    }

    async fn claim_due(&self, now: i64, lease: Duration, limit: usize) -> StoreResult<Vec<Due>> {
        let until = lease_end(now, lease);
        self.write(move |conn| {
            let claimed = conn
                .prepare_cached(
                    "UPDATE push_pending SET lease_until = ?2
                     WHERE (device_id, conversation) IN (
                         SELECT device_id, conversation FROM push_pending
                         WHERE state = 'due' AND next_at <= ?1 AND lease_until <= ?1
                         ORDER BY next_at LIMIT ?3)
                     RETURNING device_id, conversation, user_id, kind, message_id, seq, version,
                               attempts, created_at",
                )
                .and_then(|mut s| {
                    s.query_map(params![now, until, limit_to_sql(limit)], |r| {
                        Ok(Claimed {
                            target: PushTarget {
                                device: id_col(r, 0)?,
                                user: id_col(r, 2)?,
                            },
                            conversation: r.get(1)?,
                            read: r.get::<_, String>(3)? == "read",
                            message: r.get::<_, Option<i64>>(4)?.map(id_from_sql),
                            seq: r.get(5)?,
                            version: r.get(6)?,
                            attempts: r.get(7)?,
                            created_at: r.get(8)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(internal)?;
            let mut due = Vec::with_capacity(claimed.len());
            for c in claimed {
                if let Some(d) = hydrate(conn, c)? {
                    due.push(d);
                }
            }
            due.sort_by_key(|d| d.created_at);
            Ok(due)
        })
        .await
    }

    async fn finish(&self, due: &Due, outcome: Outcome, _now: i64) -> StoreResult<()> {
        let due = due.clone();
        self.write(move |conn| finish_in(conn, &due, outcome)).await
    }

    async fn push_backlog(&self) -> StoreResult<Backlog> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT (SELECT count(*) FROM push_outbox),
                        (SELECT count(*) FROM push_pending WHERE state = 'due'),
                        (SELECT min(created_at) FROM push_outbox),
                        (SELECT min(created_at) FROM push_pending WHERE state = 'due')",
            )
            .and_then(|mut s| {
                s.query_row([], |r| {
                    let oldest = [r.get::<_, Option<i64>>(2)?, r.get(3)?];
                    Ok(Backlog {
                        outbox: r.get(0)?,
                        pending: r.get(1)?,
                        oldest: oldest.into_iter().flatten().min().unwrap_or(0),
                    })
                })
            })
            .map_err(internal)
        })
        .await
    }

    async fn vapid_key(&self, candidate: &str) -> StoreResult<String> {
        let candidate = candidate.to_owned();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO push_keys (name, pem) VALUES ('vapid', ?1) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![candidate]))
            .map_err(internal)?;
            conn.prepare_cached("SELECT pem FROM push_keys WHERE name = 'vapid'")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(internal)
        })
        .await
    }
}

/// The subscribed devices an intent concerns (see [`OutboxEntry::targets`]).
fn targets(conn: &Connection, conversation: &str, intent: &Intent) -> StoreResult<Vec<PushTarget>> {
    let rows = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> StoreResult<Vec<PushTarget>> {
        conn.prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map(p, |r| {
                    Ok(PushTarget {
                        user: id_col(r, 0)?,
                        device: id_col(r, 1)?,
                    })
                })?
                .collect()
            })
            .map_err(internal)
    };
    let mut found = match *intent {
        Intent::Read { user, device, .. } => rows(
            "SELECT user_id, device_id FROM push_subscriptions
             WHERE user_id = ?1 AND device_id <> ?2",
            &[&id_to_sql(user), &id_to_sql(device)],
        )?,
        Intent::Message { seq, sender, .. } => {
            if let Some(group) = group_of(conversation) {
                rows(
                    "SELECT s.user_id, s.device_id
                     FROM group_members m JOIN push_subscriptions s ON s.user_id = m.user_id
                     WHERE m.group_id = ?1 AND m.from_seq <= ?2
                       AND (m.to_seq IS NULL OR m.to_seq >= ?2) AND m.user_id <> ?3",
                    &[&id_to_sql(group), &seq, &id_to_sql(sender)],
                )?
            } else if let Some((lo, hi)) = conversation_members(conversation) {
                let peer = if lo == sender { hi } else { lo };
                rows(
                    "SELECT user_id, device_id FROM push_subscriptions WHERE user_id = ?1",
                    &[&id_to_sql(peer)],
                )?
            } else {
                Vec::new()
            }
        }
    };
    found.sort();
    found.dedup();
    Ok(found)
}

/// The next version of a pending row (see the schema's migration 7).
fn next_version(conn: &Connection) -> StoreResult<i64> {
    conn.prepare_cached(
        "UPDATE push_versions SET version = version + 1 WHERE id = 1 RETURNING version",
    )
    .and_then(|mut s| s.query_row([], |r| r.get(0)))
    .map_err(internal)
}

/// Applies one new pending notification by the shared rules (`store::push::rules`).
fn settle_one(
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
struct Claimed {
    target: PushTarget,
    conversation: String,
    read: bool,
    message: Option<Id>,
    seq: u64,
    version: u64,
    attempts: u32,
    created_at: i64,
}

/// A claimed row with its subscription and payload's data; `None` (and the row deleted) if
/// the subscription or the message is gone.
fn hydrate(conn: &Connection, c: Claimed) -> StoreResult<Option<Due>> {
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

fn finish_in(conn: &Connection, due: &Due, outcome: Outcome) -> StoreResult<()> {
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
