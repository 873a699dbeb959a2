//! What the store's files share to speak to PostgreSQL: cached statements, ids into columns
//! and rows into the store's types.

use confab_protocol::{Id, Message};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::retry::PgError;

pub(super) const MESSAGE_COLUMNS: &str =
    "m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts";

pub(super) fn is_unique_violation(e: &PgError, constraint: Option<&str>) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && (constraint.is_none() || e.as_db_error().and_then(|d| d.constraint()) == constraint)
}

pub(super) fn to_i64(v: u64) -> i64 {
    v as i64
}

pub(super) fn db(id: Id) -> i64 {
    id.0 as i64
}

pub(super) fn id_col(row: &Row, i: usize) -> Result<Id, PgError> {
    Ok(Id(row.try_get::<_, i64>(i)? as u64))
}

pub(super) fn u64_col(row: &Row, i: usize) -> Result<u64, PgError> {
    Ok(row.try_get::<_, i64>(i)? as u64)
}

pub(super) fn message_from_row(row: &Row, at: usize) -> Result<Message, PgError> {
    Ok(Message {
        id: id_col(row, at)?,
        conversation: row.try_get(at + 1)?,
        seq: u64_col(row, at + 2)?,
        from: id_col(row, at + 3)?,
        to: id_col(row, at + 4)?,
        body: row.try_get(at + 5)?,
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
