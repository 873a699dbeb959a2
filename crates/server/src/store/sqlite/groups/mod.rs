//! [`Groups`] on SQLite. Every write runs on the writer, so writes to one group apply one at
//! a time by construction; the group's last `seq` comes from the writer's cache, like a 1:1
//! conversation's.

mod changes;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::{
    Id, MemberMarks, Message, Role, SystemEvent, SystemKind, group_conversation_id,
};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::append::find_sent;
use super::push::insert_message_intent;
use super::rows::{MESSAGE_COLUMNS, id_col, internal, is_unique_violation, message_from_row};
use super::writer::in_savepoint;
use crate::store::groups::{
    ChangeGroup, GroupAppended, GroupRecord, GroupSpan, Groups, NewGroup, NewGroupMessage,
};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};
use crate::store::{StoreError, StoreResult};

use changes::*;

#[async_trait]
impl Groups for SqliteStore {
    async fn create_group(&self, g: NewGroup) -> StoreResult<(GroupRecord, GroupAppended)> {
        self.write_raw(move |w| {
            let mut seen = HashSet::from([g.creator]);
            let others: Vec<Id> = g
                .members
                .iter()
                .copied()
                .filter(|m| seen.insert(*m))
                .collect();
            if others.len() + 1 > g.max_members {
                return Err(StoreError::Invalid(format!(
                    "a group holds at most {} members",
                    g.max_members
                )));
            }
            let conversation = group_conversation_id(g.group);
            let created = in_savepoint(&w.conn, |conn| {
                for user in std::iter::once(&g.creator).chain(&others) {
                    if !user_exists(conn, *user)? {
                        return Err(StoreError::NotFound(format!("no user {user}")));
                    }
                }
                for user in std::iter::once(&g.creator).chain(&others) {
                    check_room(conn, *user, g.max_groups)?;
                }
                for user in &others {
                    if blocks(conn, *user, g.creator)? {
                        return Err(StoreError::Forbidden(format!(
                            "user {user} does not accept you"
                        )));
                    }
                }
                conn.prepare_cached(
                    "INSERT INTO groups (id, title, created_at) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![id_to_sql(g.group), g.title, g.now]))
                .map_err(internal)?;
                open_span(conn, g.group, g.creator, 1, Role::Owner)?;
                for user in &others {
                    open_span(conn, g.group, *user, 1, Role::Member)?;
                }
                let mut all = vec![g.creator];
                all.extend(&others);
                let event = SystemEvent {
                    event: SystemKind::Created,
                    user_id: None,
                    title: Some(g.title.clone()),
                    role: None,
                    members: Some(all.clone()),
                };
                let appended =
                    system_message(conn, g.group, g.message_id, 1, g.creator, event, g.now, all)?;
                let record = load_group(conn, g.group)?
                    .ok_or_else(|| StoreError::Internal("a created group is gone".into()))?;
                Ok((record, appended))
            })?;
            w.seqs.insert(conversation, 1);
            Ok(created)
        })
        .await
    }

    async fn change_group(&self, c: ChangeGroup) -> StoreResult<Vec<GroupAppended>> {
        self.write_raw(move |w| {
            let conversation = group_conversation_id(c.group);
            let last = w.last_seq(&conversation)?.ok_or_else(no_group)?;
            w.members.remove(&id_to_sql(c.group));
            let stored = in_savepoint(&w.conn, |conn| change_in(conn, &c, last))?;
            if let Some(newest) = stored.last() {
                w.seqs.insert(conversation, newest.message.seq);
            }
            Ok(stored)
        })
        .await
    }

    async fn append_group(&self, m: NewGroupMessage) -> StoreResult<GroupAppended> {
        self.write_raw(move |w| {
            let duplicate = |message| GroupAppended {
                message: Arc::new(message),
                recipients: Arc::from([]),
                duplicate: true,
                notify: false,
            };
            // A retry gets its first answer even if the sender has left since.
            if let Some(message) = find_sent(&w.conn, m.from, &m.client_id)? {
                return Ok(duplicate(message));
            }
            let recipients = match w.members.get(&id_to_sql(m.group)) {
                Some(members) => members.clone(),
                None => {
                    let members: Arc<[Id]> = ids(&members(&w.conn, m.group)?).into();
                    w.members.insert(id_to_sql(m.group), members.clone());
                    members
                }
            };
            if !recipients.contains(&m.from) {
                return Err(no_group());
            }
            let conversation = group_conversation_id(m.group);
            let seq = w.last_seq(&conversation)?.ok_or_else(no_group)? + 1;
            let mut notify = false;
            for member in recipients.iter().filter(|r| **r != m.from) {
                if w.may_push(*member)? {
                    notify = true;
                    break;
                }
            }
            // The first change: refused whole by a unique key, or else it poisons the batch.
            let inserted = insert_message(
                &w.conn,
                m.id,
                &conversation,
                seq,
                m.from,
                &m.client_id,
                &m.body,
                None,
                m.ts,
            );
            if let Err(e) = inserted {
                if is_unique_violation(&e)
                    && let Some(message) = find_sent(&w.conn, m.from, &m.client_id)?
                {
                    return Ok(duplicate(message));
                }
                w.poisoned = true;
                return Err(internal(e));
            }
            if notify
                && let Err(e) =
                    insert_message_intent(&w.conn, &conversation, m.id, seq, m.from, m.ts)
            {
                w.poisoned = true;
                return Err(internal(e));
            }
            w.seqs.insert(conversation.clone(), seq);
            Ok(GroupAppended {
                message: Arc::new(Message {
                    id: m.id,
                    conversation,
                    seq,
                    from: m.from,
                    to: None,
                    body: m.body,
                    system: None,
                    ts: m.ts,
                }),
                recipients,
                duplicate: false,
                notify,
            })
        })
        .await
    }

    async fn group(&self, viewer: Id, group: Id) -> StoreResult<Option<GroupRecord>> {
        self.read(move |conn| {
            if role_of(conn, group, viewer)?.is_none() {
                return Ok(None);
            }
            load_group(conn, group)
        })
        .await
    }

    async fn group_receipts(&self, viewer: Id, group: Id) -> StoreResult<Option<Vec<MemberMarks>>> {
        self.read(move |conn| {
            if role_of(conn, group, viewer)?.is_none() {
                return Ok(None);
            }
            let marks = conn
                .prepare_cached(
                    "SELECT user_id, read_seq, delivered_seq FROM group_members
                     WHERE group_id = ?1 AND to_seq IS NULL ORDER BY from_seq, user_id",
                )
                .and_then(|mut s| {
                    s.query_map(params![id_to_sql(group)], |r| {
                        Ok(MemberMarks {
                            user_id: id_col(r, 0)?,
                            read_seq: r.get(1)?,
                            delivered_seq: r.get(2)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(internal)?;
            Ok(Some(marks))
        })
        .await
    }

    async fn mark_group_read(&self, user: Id, group: Id, seq: u64) -> StoreResult<Option<u64>> {
        self.write(move |conn| {
            if role_of(conn, group, user)?.is_none() {
                return Err(no_group());
            }
            let last: u64 = conn
                .prepare_cached("SELECT max(seq) FROM messages WHERE conversation = ?1")
                .and_then(|mut s| s.query_row(params![group_conversation_id(group)], |r| r.get(0)))
                .map_err(internal)?;
            let seq = seq.min(last);
            let moved = conn
                .prepare_cached(
                    "UPDATE group_members SET read_seq = ?3
                     WHERE group_id = ?1 AND user_id = ?2 AND to_seq IS NULL AND read_seq < ?3",
                )
                .and_then(|mut s| s.execute(params![id_to_sql(group), id_to_sql(user), seq]))
                .map_err(internal)?;
            Ok((moved > 0).then_some(seq))
        })
        .await
    }

    async fn group_spans(&self, device: Id, user: Id) -> StoreResult<Vec<GroupSpan>> {
        self.read(move |conn| {
            let device_created: Option<i64> = conn
                .prepare_cached("SELECT created_at FROM devices WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row(params![id_to_sql(device)], |r| r.get(0))
                        .optional()
                })
                .map_err(internal)?;
            let Some(device_created) = device_created else {
                return Ok(Vec::new());
            };
            let spans: Vec<(Id, u64, Option<u64>, u64)> = conn
                .prepare_cached(
                    "SELECT gm.group_id, gm.from_seq, gm.to_seq,
                            COALESCE((SELECT seq FROM group_marks
                                      WHERE device_id = ?1 AND group_id = gm.group_id), 0)
                     FROM group_members gm WHERE gm.user_id = ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![id_to_sql(device), id_to_sql(user)], |r| {
                        Ok((id_col(r, 0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(internal)?;
            let mut last_of = conn
                .prepare_cached("SELECT max(seq) FROM messages WHERE conversation = ?1")
                .map_err(internal)?;
            let mut ended_at = conn
                .prepare_cached("SELECT ts FROM messages WHERE conversation = ?1 AND seq = ?2")
                .map_err(internal)?;
            let mut out = Vec::new();
            for (group, from_seq, to_seq, mark) in spans {
                let conversation = group_conversation_id(group);
                let after = mark.max(from_seq - 1);
                let end = match to_seq {
                    Some(to) => {
                        let ended: i64 = ended_at
                            .query_row(params![conversation, to], |r| r.get(0))
                            .map_err(internal)?;
                        if ended < device_created {
                            continue; // the device came after the user left
                        }
                        to
                    }
                    None => last_of
                        .query_row(params![conversation], |r| r.get::<_, Option<u64>>(0))
                        .map_err(internal)?
                        .unwrap_or(0),
                };
                // A current membership is always named: the socket keeps its place in it.
                if to_seq.is_none() || end > after {
                    out.push(GroupSpan {
                        group,
                        after,
                        upto: to_seq,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn group_messages(
        &self,
        group: Id,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<Message>> {
        self.read(move |conn| {
            let upto = upto.map_or(i64::MAX, count_to_sql);
            conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages m
                 WHERE m.conversation = ?1 AND m.seq > ?2 AND m.seq <= ?3
                 ORDER BY m.seq LIMIT +?4"
            ))
            .and_then(|mut s| {
                s.query_map(
                    params![
                        group_conversation_id(group),
                        count_to_sql(after),
                        upto,
                        limit_to_sql(limit)
                    ],
                    |r| message_from_row(r, 0),
                )?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(internal)
        })
        .await
    }

    async fn set_group_mark(&self, device: Id, user: Id, group: Id, seq: u64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO group_marks (device_id, group_id, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, group_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            )
            .and_then(|mut s| s.execute(params![id_to_sql(device), id_to_sql(group), seq]))
            .map_err(internal)?;
            // The user's latest span: its delivered mark moves within what the span shows.
            conn.prepare_cached(
                "UPDATE group_members SET delivered_seq = min(?3, coalesce(to_seq, ?3))
                 WHERE group_id = ?1 AND user_id = ?2
                   AND from_seq = (SELECT max(from_seq) FROM group_members
                                   WHERE group_id = ?1 AND user_id = ?2)
                   AND delivered_seq < min(?3, coalesce(to_seq, ?3))",
            )
            .and_then(|mut s| s.execute(params![id_to_sql(group), id_to_sql(user), seq]))
            .map_err(internal)?;
            Ok(())
        })
        .await
    }
}
