//! What the store's files share to speak to PostgreSQL: cached statements, ids into columns
//! and rows into the store's types.

use confab_protocol::{Id, Message};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::retry::{Failure, PgError};
use crate::store::sql_integers::id_from_sql;
use crate::store::{StoreError, recipient, system_event};

pub(super) const MESSAGE_COLUMNS: &str =
    "m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts, m.system";

pub(super) fn is_unique_violation(e: &PgError, constraint: Option<&str>) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && (constraint.is_none() || e.as_db_error().and_then(|d| d.constraint()) == constraint)
}

pub(super) fn id_col(row: &Row, i: usize) -> Result<Id, PgError> {
    row.try_get(i).map(id_from_sql)
}

/// A count (position, seq, cursor, mark) from its column. The store writes none below zero,
/// so a negative one is a corrupt row, answered as such rather than wrapped.
pub(super) fn u64_col(row: &Row, i: usize) -> Result<u64, Failure> {
    let v: i64 = row.try_get(i)?;
    u64::try_from(v).map_err(|_| {
        let column = row.columns().get(i).map_or("?", |c| c.name());
        Failure::Final(StoreError::Internal(format!(
            "negative count {v} in column {column}"
        )))
    })
}

/// A message from [`MESSAGE_COLUMNS`] at `at`.
pub(super) fn message_from_row(row: &Row, at: usize) -> Result<Message, Failure> {
    let system: Option<String> = row.try_get(at + 7)?;
    Ok(Message {
        id: id_col(row, at)?,
        conversation: row.try_get(at + 1)?,
        seq: u64_col(row, at + 2)?,
        from: id_col(row, at + 3)?,
        to: recipient(id_col(row, at + 4)?),
        body: row.try_get(at + 5)?,
        system: system
            .map(|s| system_event(&s))
            .transpose()
            .map_err(|e| Failure::Final(StoreError::Internal(e)))?,
        ts: row.try_get(at + 6)?,
    })
}

/// A text message from the seven columns `confab_append` answers (a 1:1 send's; its stored
/// duplicate, found by a client's own `client_id`, is never a `system` one).
pub(super) fn text_message_from_row(row: &Row, at: usize) -> Result<Message, Failure> {
    Ok(Message {
        id: id_col(row, at)?,
        conversation: row.try_get(at + 1)?,
        seq: u64_col(row, at + 2)?,
        from: id_col(row, at + 3)?,
        to: recipient(id_col(row, at + 4)?),
        body: row.try_get(at + 5)?,
        system: None,
        ts: row.try_get(at + 6)?,
    })
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(super) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query(&stmt, params).await
}

pub(super) async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_opt(&stmt, params).await
}

pub(super) async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_one(&stmt, params).await
}

pub(super) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, params).await
}
