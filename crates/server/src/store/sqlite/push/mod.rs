//! Push state in the embedded store (`store::push`): every write on the writer, so an intent
//! commits with its message; reads on the pool.

use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{Id, PushSubscription, conversation_members, group_of};
use rusqlite::{Connection, OptionalExtension, params};

mod pending;

use super::SqliteStore;
use super::rows::{id_col, internal};
use super::writer::in_savepoint;
use crate::store::push::rules::Room;
use crate::store::push::{
    Backlog, Due, Intent, NewPending, OutboxEntry, Outcome, Push, PushTarget, Settled,
};
use crate::store::sql_integers::{id_from_sql, id_to_sql, limit_to_sql};
use crate::store::{StoreError, StoreResult};
use pending::{Claimed, finish_in, hydrate, settle_one};

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
