//! [`Conversations`] on SQLite: the conversation list, pages of history and read marks. A
//! conversation's last `seq` is read off the messages index (`max(seq)`), not kept in a column
//! (migration 3).

use std::sync::LazyLock;

use async_trait::async_trait;
use confab_protocol::{
    ConversationSummary, GroupSummary, Id, MessagePage, group_conversation_id, group_of,
};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::rows::{MESSAGE_COLUMNS, id_col, internal, message_from_row};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};
use crate::store::{
    ConversationPage, Conversations, ReadAdvance, Side, StoreError, StoreResult, friends_sql,
    page_of_newest, side_of,
};

/// A page of the conversation list: each conversation's last message (its id is the order and
/// the cursor), the marks, and whether the peer is a friend. Made once.
static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT c.id, c.user_lo, c.user_hi, m.seq,
                c.read_lo, c.read_hi, c.delivered_lo, c.delivered_hi, {},
                {MESSAGE_COLUMNS}
         FROM conversations c
         JOIN messages m ON m.conversation = c.id AND m.seq =
             (SELECT max(seq) FROM messages WHERE conversation = c.id)
         WHERE (c.user_lo = ?1 OR c.user_hi = ?1) AND m.id < ?2
         ORDER BY m.id DESC LIMIT +?3",
        friends_sql(
            "?1",
            "(CASE WHEN c.user_lo = ?1 THEN c.user_hi ELSE c.user_lo END)"
        )
    )
});

/// A page of the user's groups, as [`LIST_SQL`] pages the 1:1 conversations: each group's last
/// message, the member's read mark, the title and the count of current members.
static GROUP_LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT g.id, g.title, gm.read_seq,
                (SELECT count(*) FROM group_members
                 WHERE group_id = g.id AND to_seq IS NULL),
                {MESSAGE_COLUMNS}
         FROM group_members gm
         JOIN groups g ON g.id = gm.group_id
         JOIN messages m ON m.conversation = 'g' || g.id AND m.seq =
             (SELECT max(seq) FROM messages WHERE conversation = 'g' || g.id)
         WHERE gm.user_id = ?1 AND gm.to_seq IS NULL AND m.id < ?2
         ORDER BY m.id DESC LIMIT +?3"
    )
});

/// The user's groups for one page of the list (at most `fetch`).
fn group_entries(
    conn: &rusqlite::Connection,
    user: Id,
    before: i64,
    fetch: i64,
) -> StoreResult<Vec<ConversationSummary>> {
    let mut stmt = conn.prepare_cached(&GROUP_LIST_SQL).map_err(internal)?;
    let rows = stmt
        .query_map(params![id_to_sql(user), before, fetch], |r| {
            let message = message_from_row(r, 4)?;
            Ok(ConversationSummary {
                conversation: message.conversation.clone(),
                peer: None,
                last_seq: message.seq,
                read_seq: r.get(2)?,
                peer_read_seq: None,
                peer_delivered_seq: None,
                group: Some(GroupSummary {
                    title: r.get(1)?,
                    members_count: r.get(3)?,
                }),
                last_message: Some(message),
            })
        })
        .map_err(internal)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(internal)
}

#[async_trait]
impl Conversations for SqliteStore {
    async fn conversations(
        &self,
        user: Id,
        before: Option<Id>,
        limit: usize,
    ) -> StoreResult<ConversationPage> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&LIST_SQL).map_err(internal)?;
            let before = before.map_or(i64::MAX, id_to_sql);
            let fetch = limit_to_sql(limit).saturating_add(1);
            let rows = stmt
                .query_map(params![id_to_sql(user), before, fetch], |r| {
                    let lo = id_col(r, 1)?;
                    let hi = id_col(r, 2)?;
                    let col = |i| r.get::<_, u64>(i);
                    let (read_lo, read_hi, del_lo, del_hi) = (col(4)?, col(5)?, col(6)?, col(7)?);
                    let friends: bool = r.get(8)?;
                    let i_am_lo = lo == user;
                    // A non-friend learns nothing of when the user was online or read.
                    let shown = |mark: u64| if friends { mark } else { 0 };
                    Ok(ConversationSummary {
                        conversation: r.get(0)?,
                        peer: Some(if i_am_lo { hi } else { lo }),
                        last_seq: col(3)?,
                        last_message: Some(message_from_row(r, 9)?),
                        read_seq: if i_am_lo { read_lo } else { read_hi },
                        peer_read_seq: Some(shown(if i_am_lo { read_hi } else { read_lo })),
                        peer_delivered_seq: Some(shown(if i_am_lo { del_hi } else { del_lo })),
                        group: None,
                    })
                })
                .map_err(internal)?;
            let mut conversations = rows.collect::<Result<Vec<_>, _>>().map_err(internal)?;
            // Groups and 1:1 conversations in one order: by their last message's id.
            conversations.extend(group_entries(conn, user, before, fetch)?);
            Ok(ConversationPage::merged(conversations, limit))
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
        self.read(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM conversations WHERE id = ?1")
                .and_then(|mut s| s.exists(params![conversation]))
                .map_err(internal)?;
            if !exists {
                return Ok(None);
            }
            let before = before.map_or(i64::MAX, count_to_sql);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.conversation = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT +?3"
                ))
                .map_err(internal)?;
            let messages = stmt
                .query_map(
                    params![conversation, before, limit_to_sql(limit).saturating_add(1)],
                    |r| message_from_row(r, 0),
                )
                .map_err(internal)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?;
            Ok(Some(page_of_newest(messages, limit)))
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
        self.write(move |conn| {
            let last: Option<u64> = conn
                .prepare_cached("SELECT max(seq) FROM messages WHERE conversation = ?1")
                .and_then(|mut s| s.query_row(params![conversation], |r| r.get(0)))
                .map_err(internal)?;
            let last = last.ok_or_else(not_found)?;
            let seq = seq.min(last);
            let sql = if is_lo {
                "UPDATE conversations SET read_lo = ?2 WHERE id = ?1 AND read_lo < ?2"
            } else {
                "UPDATE conversations SET read_hi = ?2 WHERE id = ?1 AND read_hi < ?2"
            };
            let changed = conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![conversation, seq]))
                .map_err(internal)?;
            if changed == 0 {
                return Ok(None);
            }
            let friends = conn
                .prepare_cached(&format!("SELECT {}", friends_sql("?1", "?2")))
                .and_then(|mut s| {
                    s.query_row(params![id_to_sql(user), id_to_sql(peer)], |r| r.get(0))
                })
                .map_err(internal)?;
            Ok(Some(ReadAdvance { peer, seq, friends }))
        })
        .await
    }
}

impl SqliteStore {
    /// A page of a group's history as `user` sees it: from the event that added them, if they
    /// are a member now.
    async fn group_page(
        &self,
        user: Id,
        group: Id,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Option<MessagePage>> {
        self.read(move |conn| {
            let from: Option<u64> = conn
                .prepare_cached(
                    "SELECT from_seq FROM group_members
                     WHERE group_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
                )
                .and_then(|mut s| {
                    s.query_row(params![id_to_sql(group), id_to_sql(user)], |r| r.get(0))
                        .optional()
                })
                .map_err(internal)?;
            let Some(from) = from else {
                return Ok(None);
            };
            let before = before.map_or(i64::MAX, count_to_sql);
            let messages = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.conversation = ?1 AND m.seq >= ?2 AND m.seq < ?3
                     ORDER BY m.seq DESC LIMIT +?4"
                ))
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            group_conversation_id(group),
                            count_to_sql(from),
                            before,
                            limit_to_sql(limit).saturating_add(1)
                        ],
                        |r| message_from_row(r, 0),
                    )?
                    .collect::<Result<Vec<_>, _>>()
                })
                .map_err(internal)?;
            Ok(Some(page_of_newest(messages, limit)))
        })
        .await
    }
}
