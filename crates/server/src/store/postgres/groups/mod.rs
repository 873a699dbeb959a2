//! [`Groups`] on PostgreSQL. A group's messages are its own log (`messages` by conversation
//! `g<id>`); its row holds the `seq` counter, and membership is spans in `group_members`.
//!
//! Every write to a group starts by locking the group's row (the counter's update, or
//! `FOR UPDATE` before a change), and reads membership only after: the row lock is held until
//! commit, so writes to one group apply one at a time, and each statement after the lock
//! (READ COMMITTED takes a snapshot per statement) sees every change committed before it.
//! Two admins removing each other: the second finds itself removed. No group operation locks
//! a `users` row, so none can deadlock with a 1:1 append, which locks those first.

mod changes;
mod statements;

use async_trait::async_trait;
use confab_protocol::{Id, MemberMarks, Message, group_conversation_id};

use super::PostgresStore;
use super::retry::Failure;
use super::rows::{MESSAGE_COLUMNS, execute, id_col, message_from_row, query, query_opt, u64_col};
use crate::store::StoreResult;
use crate::store::groups::{
    ChangeGroup, GroupAppended, GroupRecord, GroupSpan, Groups, NewGroup, NewGroupMessage,
};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};

use changes::*;
use statements::*;

#[async_trait]
impl Groups for PostgresStore {
    async fn create_group(&self, group: NewGroup) -> StoreResult<(GroupRecord, GroupAppended)> {
        self.write(move |tx| {
            let g = group.clone();
            Box::pin(async move { create_in(tx, &g).await })
        })
        .await
    }

    async fn change_group(&self, change: ChangeGroup) -> StoreResult<Vec<GroupAppended>> {
        self.write(move |tx| {
            let ch = change.clone();
            Box::pin(async move { change_in(tx, &ch).await })
        })
        .await
    }

    async fn append_group(&self, message: NewGroupMessage) -> StoreResult<GroupAppended> {
        // Retried on a lost connection like a 1:1 append: a stored send is found by its
        // `client_id` and answered as a duplicate.
        self.run(move |c| {
            let m = message.clone();
            Box::pin(async move { append_group_in(c, &m).await })
        })
        .await
    }

    async fn group(&self, viewer: Id, group: Id) -> StoreResult<Option<GroupRecord>> {
        self.run(move |c| Box::pin(group_in(c, viewer, group)))
            .await
    }

    async fn group_receipts(&self, viewer: Id, group: Id) -> StoreResult<Option<Vec<MemberMarks>>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows =
                    query(c, &RECEIPTS_SQL, &[&id_to_sql(group), &id_to_sql(viewer)]).await?;
                if rows.is_empty() {
                    return Ok(None);
                }
                let mut marks = Vec::with_capacity(rows.len());
                for r in &rows {
                    marks.push(MemberMarks {
                        user_id: id_col(r, 0)?,
                        read_seq: u64_col(r, 1)?,
                        delivered_seq: u64_col(r, 2)?,
                    });
                }
                Ok(Some(marks))
            })
        })
        .await
    }

    async fn mark_group_read(&self, user: Id, group: Id, seq: u64) -> StoreResult<Option<u64>> {
        self.run(move |c| {
            Box::pin(async move {
                let params = (id_to_sql(group), id_to_sql(user), count_to_sql(seq));
                if let Some(row) =
                    query_opt(c, MARK_READ_SQL, &[&params.0, &params.1, &params.2]).await?
                {
                    return Ok(Some(u64_col(&row, 0)?));
                }
                // Nothing moved: a member whose mark is there already, or not a member.
                match current_role(c, group, user).await? {
                    Some(_) => Ok(None),
                    None => Err(Failure::Final(not_a_member())),
                }
            })
        })
        .await
    }

    async fn group_spans(&self, device: Id, user: Id) -> StoreResult<Vec<GroupSpan>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(c, SPANS_SQL, &[&id_to_sql(device), &id_to_sql(user)]).await?;
                let mut spans = Vec::with_capacity(rows.len());
                for r in &rows {
                    let upto: Option<i64> = r.try_get(2)?;
                    spans.push(GroupSpan {
                        group: id_col(r, 0)?,
                        after: u64_col(r, 1)?,
                        upto: match upto {
                            Some(_) => Some(u64_col(r, 2)?),
                            None => None,
                        },
                    });
                }
                Ok(spans)
            })
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
        let conversation = group_conversation_id(group);
        let upto = upto.map_or(i64::MAX, count_to_sql);
        self.run(move |c| {
            let conversation = conversation.clone();
            Box::pin(async move {
                let rows = query(
                    c,
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m
                         WHERE m.conversation = $1 AND m.seq > $2 AND m.seq <= $3
                         ORDER BY m.seq LIMIT $4"
                    ),
                    &[
                        &conversation,
                        &count_to_sql(after),
                        &upto,
                        &limit_to_sql(limit),
                    ],
                )
                .await?;
                rows.iter().map(|r| message_from_row(r, 0)).collect()
            })
        })
        .await
    }

    async fn set_group_mark(&self, device: Id, user: Id, group: Id, seq: u64) -> StoreResult<()> {
        // Retried freely: a repeated ack finds the marks moved and changes nothing.
        self.run(move |c| {
            Box::pin(async move {
                execute(
                    c,
                    SET_MARK_SQL,
                    &[
                        &id_to_sql(device),
                        &id_to_sql(group),
                        &id_to_sql(user),
                        &count_to_sql(seq),
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }
}
