//! [`Conversations`] on PostgreSQL: the conversation list, pages of history and read marks,
//! for 1:1 conversations and for the groups a user is a member of now.

use std::sync::LazyLock;

use async_trait::async_trait;
use confab_protocol::{ConversationSummary, GroupSummary, Id, MessagePage, group_of};
use tokio_postgres::Row;

use super::PostgresStore;
use super::retry::Failure;
use super::rows::{MESSAGE_COLUMNS, id_col, message_from_row, query, query_opt, u64_col};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};
use crate::store::{
    ConversationPage, Conversations, ReadAdvance, Side, StoreError, StoreResult, friends_sql,
    page_of_newest, side_of,
};

/// A page of the conversation list, as in SQLite: ordered by each conversation's last message
/// id (the cursor), with whether the peer is a friend. Made once.
static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.id, c.user_lo, c.user_hi, c.last_seq,
                c.read_lo, c.read_hi, c.delivered_lo, c.delivered_hi, {},
                {MESSAGE_COLUMNS}
         FROM conversations c
         JOIN messages m ON m.conversation = c.id AND m.seq = c.last_seq
         WHERE (c.user_lo = $1 OR c.user_hi = $1) AND m.id < $2
         ORDER BY m.id DESC LIMIT $3",
        friends_sql(
            "$1",
            "(CASE WHEN c.user_lo = $1 THEN c.user_hi ELSE c.user_lo END)"
        )
    )
});

/// The groups of the list's page: those `$1` is a member of now, ordered as the 1:1 ones, with
/// the member's read mark and the count of current members.
static GROUP_LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT g.last_seq, gm.read_seq, g.title,
                (SELECT count(*) FROM group_members n
                 WHERE n.group_id = g.id AND n.to_seq IS NULL),
                {MESSAGE_COLUMNS}
         FROM group_members gm
         JOIN groups g ON g.id = gm.group_id
         JOIN messages m ON m.conversation = 'g' || g.id::TEXT AND m.seq = g.last_seq
         WHERE gm.user_id = $1 AND gm.to_seq IS NULL AND m.id < $2
         ORDER BY m.id DESC LIMIT $3"
    )
});

/// A page of a group's history for a member now: from the event that added them (their
/// current span's start), below `$3`, newest first.
static GROUP_PAGE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m
         WHERE m.conversation = $1 AND m.seq >= $2 AND m.seq < $3
         ORDER BY m.seq DESC LIMIT $4"
    )
});

/// A read mark's update, answering whether the reader ($3) and the peer ($4) are friends.
static READ_LO_SQL: LazyLock<String> = LazyLock::new(|| read_sql("read_lo"));
static READ_HI_SQL: LazyLock<String> = LazyLock::new(|| read_sql("read_hi"));

fn read_sql(column: &str) -> String {
    format!(
        "UPDATE conversations SET {column} = $2 WHERE id = $1 AND {column} < $2
         RETURNING {}",
        friends_sql("$3::BIGINT", "$4::BIGINT")
    )
}

#[async_trait]
impl Conversations for PostgresStore {
    async fn conversations(
        &self,
        user: Id,
        before: Option<Id>,
        limit: usize,
    ) -> StoreResult<ConversationPage> {
        let before = before.map_or(i64::MAX, id_to_sql);
        // One more than asked tells whether older conversations exist.
        let fetch = limit_to_sql(limit).saturating_add(1);
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(c, &LIST_SQL, &[&id_to_sql(user), &before, &fetch]).await?;
                let groups =
                    query(c, &GROUP_LIST_SQL, &[&id_to_sql(user), &before, &fetch]).await?;
                let mut conversations = Vec::with_capacity(rows.len() + groups.len());
                for r in &groups {
                    conversations.push(group_summary(r)?);
                }
                for r in rows {
                    let (lo, hi) = (id_col(&r, 1)?, id_col(&r, 2)?);
                    let (read_lo, read_hi) = (u64_col(&r, 4)?, u64_col(&r, 5)?);
                    let (del_lo, del_hi) = (u64_col(&r, 6)?, u64_col(&r, 7)?);
                    let friends: bool = r.try_get(8)?;
                    let i_am_lo = lo == user;
                    // A non-friend learns nothing of when the user was online or read.
                    let shown = |mark: u64| if friends { mark } else { 0 };
                    conversations.push(ConversationSummary {
                        conversation: r.try_get(0)?,
                        peer: Some(if i_am_lo { hi } else { lo }),
                        last_seq: u64_col(&r, 3)?,
                        last_message: Some(message_from_row(&r, 9)?),
                        read_seq: if i_am_lo { read_lo } else { read_hi },
                        peer_read_seq: Some(shown(if i_am_lo { read_hi } else { read_lo })),
                        peer_delivered_seq: Some(shown(if i_am_lo { del_hi } else { del_lo })),
                        group: None,
                    });
                }
                // Each part holds up to `limit + 1` of its newest: merged, the first
                // `limit + 1` of both are among them.
                Ok(ConversationPage::merged(conversations, limit))
            })
        })
        .await
    }

    async fn messages(
        &self,
        user: Id,
        conversation: &str,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<MessagePage>> {
        if let Some(group) = group_of(conversation) {
            return self.group_page(user, group, before, limit).await;
        }
        if side_of(conversation, user).is_none() {
            return Ok(None);
        }
        let conversation = conversation.to_owned();
        let before = before.map_or(i64::MAX, count_to_sql);
        // One more than asked tells whether older messages exist.
        let fetch = limit_to_sql(limit).saturating_add(1);
        self.run(move |c| {
            let conversation = conversation.clone();
            Box::pin(async move {
                let exists = query_opt(
                    c,
                    "SELECT 1 FROM conversations WHERE id = $1",
                    &[&conversation],
                )
                .await?
                .is_some();
                if !exists {
                    return Ok(None);
                }
                let rows = query(
                    c,
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages m
                         WHERE m.conversation = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3"
                    ),
                    &[&conversation, &before, &fetch],
                )
                .await?;
                let messages = rows
                    .iter()
                    .map(|r| message_from_row(r, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(page_of_newest(messages, limit)))
            })
        })
        .await
    }

    async fn mark_read(
        &self,
        user: Id,
        conversation: &str,
        seq: u64,
    ) -> StoreResult<Option<ReadAdvance>> {
        let not_found = || StoreError::NotFound("no such conversation".into());
        let Side { is_lo, peer } = side_of(conversation, user).ok_or_else(not_found)?;
        let conversation = conversation.to_owned();
        self.write(move |tx| {
            let conversation = conversation.clone();
            Box::pin(async move {
                let last = query_opt(
                    tx,
                    "SELECT last_seq FROM conversations WHERE id = $1",
                    &[&conversation],
                )
                .await?
                .ok_or_else(not_found)?;
                let seq = seq.min(u64_col(&last, 0)?);
                // Whether the two are friends comes back with the update: no extra round trip.
                let sql = if is_lo { &*READ_LO_SQL } else { &*READ_HI_SQL };
                let (seq_sql, user_sql, peer_sql) =
                    (count_to_sql(seq), id_to_sql(user), id_to_sql(peer));
                let params = [
                    &conversation as _,
                    &seq_sql as _,
                    &user_sql as _,
                    &peer_sql as _,
                ];
                let Some(row) = query_opt(tx, sql, &params).await? else {
                    return Ok(None);
                };
                Ok(Some(ReadAdvance {
                    peer,
                    seq,
                    friends: row.try_get(0)?,
                }))
            })
        })
        .await
    }
}

/// A group's entry of the list, from a row of [`GROUP_LIST_SQL`].
fn group_summary(r: &Row) -> Result<ConversationSummary, Failure> {
    let message = message_from_row(r, 4)?;
    Ok(ConversationSummary {
        conversation: message.conversation.clone(),
        peer: None,
        last_seq: u64_col(r, 0)?,
        read_seq: u64_col(r, 1)?,
        peer_read_seq: None,
        peer_delivered_seq: None,
        group: Some(GroupSummary {
            title: r.try_get(2)?,
            members_count: u64_col(r, 3)?,
        }),
        last_message: Some(message),
    })
}

impl PostgresStore {
    /// [`Conversations::messages`] of a group: `None` unless `user` is a member now; the
    /// history starts at the event that added them.
    async fn group_page(
        &self,
        user: Id,
        group: Id,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<MessagePage>> {
        let conversation = confab_protocol::group_conversation_id(group);
        let before = before.map_or(i64::MAX, count_to_sql);
        // One more than asked tells whether older messages exist.
        let fetch = limit_to_sql(limit).saturating_add(1);
        self.run(move |c| {
            let conversation = conversation.clone();
            Box::pin(async move {
                let Some(span) = query_opt(
                    c,
                    "SELECT from_seq FROM group_members
                     WHERE group_id = $1 AND user_id = $2 AND to_seq IS NULL",
                    &[&id_to_sql(group), &id_to_sql(user)],
                )
                .await?
                else {
                    return Ok(None);
                };
                let from: i64 = span.try_get(0)?;
                let rows =
                    query(c, &GROUP_PAGE_SQL, &[&conversation, &from, &before, &fetch]).await?;
                let messages = rows
                    .iter()
                    .map(|r| message_from_row(r, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(page_of_newest(messages, limit)))
            })
        })
        .await
    }
}
