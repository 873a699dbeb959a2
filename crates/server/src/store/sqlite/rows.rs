//! What the store's files share to speak to SQLite: rows into the store's types, ids into
//! columns, and SQLite's errors into [`StoreError`].

use confab_protocol::{Id, Message};

use crate::store::StoreError;
use crate::store::sql_integers::id_from_sql;

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
    "m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts";

pub(super) fn message_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        id: id_col(row, at)?,
        conversation: row.get(at + 1)?,
        seq: row.get(at + 2)?,
        from: id_col(row, at + 3)?,
        to: id_col(row, at + 4)?,
        body: row.get(at + 5)?,
        ts: row.get(at + 6)?,
    })
}
