//! [`Conversations`] on PostgreSQL: the conversation list, pages of history and read marks.

use async_trait::async_trait;
use confab_protocol::{ConversationSummary, Id, MessagePage};

use super::PostgresStore;
use super::rows::{MESSAGE_COLUMNS, execute, id_col, message_from_row, query, query_opt, u64_col};
use crate::store::sql_integers::{count_to_sql, id_to_sql, limit_to_sql};
use crate::store::{Conversations, ReadAdvance, Side, StoreError, StoreResult, side_of};

#[async_trait]
impl Conversations for PostgresStore {
    async fn conversations(&self, user: Id) -> StoreResult<Vec<ConversationSummary>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    &format!(
                        "SELECT c.id, c.user_lo, c.user_hi, c.last_seq,
                                c.read_lo, c.read_hi, c.delivered_lo, c.delivered_hi,
                                {MESSAGE_COLUMNS}
                         FROM conversations c
                         JOIN messages m ON m.conversation = c.id AND m.seq = c.last_seq
                         WHERE c.user_lo = $1 OR c.user_hi = $1
                         ORDER BY c.last_ts DESC, m.id DESC"
                    ),
                    &[&id_to_sql(user)],
                )
                .await?;
                let mut list = Vec::with_capacity(rows.len());
                for r in rows {
                    let (lo, hi) = (id_col(&r, 1)?, id_col(&r, 2)?);
                    let (read_lo, read_hi) = (u64_col(&r, 4)?, u64_col(&r, 5)?);
                    let (del_lo, del_hi) = (u64_col(&r, 6)?, u64_col(&r, 7)?);
                    let i_am_lo = lo == user;
                    list.push(ConversationSummary {
                        conversation: r.try_get(0)?,
                        peer: if i_am_lo { hi } else { lo },
                        last_seq: u64_col(&r, 3)?,
                        last_message: Some(message_from_row(&r, 8)?),
                        read_seq: if i_am_lo { read_lo } else { read_hi },
                        peer_read_seq: if i_am_lo { read_hi } else { read_lo },
                        peer_delivered_seq: if i_am_lo { del_hi } else { del_lo },
                    });
                }
                Ok(list)
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
                let mut messages = rows
                    .iter()
                    .map(|r| message_from_row(r, 0))
                    .collect::<Result<Vec<_>, _>>()?;
                let more = messages.len() > limit;
                messages.truncate(limit);
                messages.reverse();
                Ok(Some(MessagePage { messages, more }))
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
                let sql = if is_lo {
                    "UPDATE conversations SET read_lo = $2 WHERE id = $1 AND read_lo < $2"
                } else {
                    "UPDATE conversations SET read_hi = $2 WHERE id = $1 AND read_hi < $2"
                };
                let changed = execute(tx, sql, &[&conversation, &count_to_sql(seq)]).await?;
                Ok((changed > 0).then_some(ReadAdvance { peer, seq }))
            })
        })
        .await
    }
}
