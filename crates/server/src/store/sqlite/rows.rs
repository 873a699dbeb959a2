//! What the store's files share to speak to SQLite: rows into the store's types, ids into
//! columns, and SQLite's errors into [`StoreError`].

use confab_protocol::{Id, Message};

use crate::store::sql_integers::id_from_sql;
use crate::store::{StoreError, recipient, system_event};

pub(super) fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

pub(super) fn id_col(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Id> {
    row.get(i).map(id_from_sql)
}

pub(super) const MESSAGE_COLUMNS: &str =
    "m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts, m.system";

pub(super) fn message_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Message> {
    let system: Option<String> = row.get(at + 7)?;
    Ok(Message {
        id: id_col(row, at)?,
        conversation: row.get(at + 1)?,
        seq: row.get(at + 2)?,
        from: id_col(row, at + 3)?,
        to: recipient(id_col(row, at + 4)?),
        body: row.get(at + 5)?,
        system: system.map(|s| system_event(&s)).transpose().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(at + 7, rusqlite::types::Type::Text, e.into())
        })?,
        ts: row.get(at + 6)?,
    })
}
