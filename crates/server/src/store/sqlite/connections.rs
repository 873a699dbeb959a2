//! How the store's connections are opened: the writer's pragmas, the readers' settings, and
//! the busy handling they share. The writer, the checkpointer and the readers meet on the same
//! WAL locks, so their settings are chosen together, here.

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::rows::internal;
use crate::store::{StoreError, StoreResult};

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

/// Page cache of each pooled reader, KiB. Every commit empties a WAL reader's cache, so a
/// big one mostly holds pages that are stale by the next read; the OS caches the file anyway.
const READER_CACHE_KIB: i64 = 256;

/// How long a connection (the writer, the checkpointer, a reader) waits for a lock another holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pause between their tries for a busy lock.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(100);

/// The writer's and the checkpointer's busy handler: retry every [`BUSY_RETRY`] until
/// [`BUSY_TIMEOUT`].
pub(super) fn busy_retry(tries: i32) -> bool {
    if BUSY_RETRY * u32::try_from(tries).unwrap_or(0) >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

/// Every statement keeps the plan it was prepared with, whatever values are bound to it (the
/// query planner stability guarantee). Without it SQLite (with STAT4, as bundled) marks
/// parameters whose values could change a plan, and re-prepares the statement, parsing and
/// planning it again, whenever a new value is bound: on the store's hot reads, for every
/// call. The store's queries are simple indexed lookups whose plan no value changes.
fn stable_plans(conn: &Connection) -> StoreResult<()> {
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map(|_| ())
        .map_err(internal)
}

/// Opens the writable connection and sets it up for group commit.
pub(super) fn open_writer(path: &Path) -> StoreResult<Connection> {
    let mut conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    // WAL lets readers run during commits; FULL makes every commit fsync the WAL, which
    // is what a `sent` ack promises.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(internal)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(internal)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(internal)?;
    // Every write runs in a savepoint; keep their sub-journals in memory rather than in a
    // temporary file (they are discarded at commit either way).
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(internal)?;
    // 64 MiB of page cache: the hot pages (heads, conversations, index tails) stay cached.
    conn.pragma_update(None, "cache_size", -65536)
        .map_err(internal)?;
    // Checkpoints run on their own thread (see `checkpointer`), not inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(internal)?;
    // The checkpointer's connection briefly holds WAL locks the writer's `BEGIN` needs.
    // SQLite's own busy handler sleeps 1, 2, 5, 10 … ms between tries, which would stall
    // every message in the batch far longer than the lock is held.
    conn.busy_handler(Some(busy_retry)).map_err(internal)?;
    // rusqlite keeps 16 prepared statements per connection by default; the writer uses
    // more than that, and a statement evicted from the cache is parsed again on next use.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    stable_plans(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection for a pooled reader.
pub(super) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open reader: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(internal)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
        .map_err(internal)?;
    stable_plans(&conn)?;
    Ok(conn)
}
