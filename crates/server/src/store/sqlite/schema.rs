//! The embedded store's schema, as the migrations applied when it opens. Kept apart from the
//! code that reads and writes the tables, so that a change of schema reads as one diff here.

use rusqlite::Connection;

use super::rows::internal;
use crate::store::{StoreError, StoreResult};

/// Schema versions, applied in order and recorded in `PRAGMA user_version`. Append new
/// migrations; never edit one that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: accounts, devices, conversations, messages, per-user streams.
    r#"
    CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        username      TEXT    NOT NULL,
        username_key  TEXT    NOT NULL UNIQUE,
        password_hash TEXT    NOT NULL,
        created_at    INTEGER NOT NULL,
        stream_head   INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE devices (
        id          INTEGER PRIMARY KEY,
        user_id     INTEGER NOT NULL REFERENCES users(id),
        name        TEXT,
        token_hash  BLOB    NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL,
        revoked_at  INTEGER,
        cursor      INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_user ON devices(user_id);
    CREATE TABLE conversations (
        id            TEXT    PRIMARY KEY,
        user_lo       INTEGER NOT NULL,
        user_hi       INTEGER NOT NULL,
        last_seq      INTEGER NOT NULL,
        last_ts       INTEGER NOT NULL,
        read_lo       INTEGER NOT NULL DEFAULT 0,
        read_hi       INTEGER NOT NULL DEFAULT 0,
        delivered_lo  INTEGER NOT NULL DEFAULT 0,
        delivered_hi  INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX conversations_lo ON conversations(user_lo, last_ts);
    CREATE INDEX conversations_hi ON conversations(user_hi, last_ts);
    CREATE TABLE messages (
        id            INTEGER PRIMARY KEY,
        conversation  TEXT    NOT NULL,
        seq           INTEGER NOT NULL,
        sender        INTEGER NOT NULL,
        recipient     INTEGER NOT NULL,
        client_id     TEXT    NOT NULL,
        body          TEXT    NOT NULL,
        ts            INTEGER NOT NULL,
        UNIQUE (conversation, seq),
        UNIQUE (sender, client_id)
    );
    CREATE TABLE stream (
        user_id    INTEGER NOT NULL,
        pos        INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        PRIMARY KEY (user_id, pos)
    ) WITHOUT ROWID;
    "#,
    // 2: contacts, blocks, last seen.
    r#"
    CREATE TABLE contacts (
        owner      INTEGER NOT NULL,
        contact    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (owner, contact)
    ) WITHOUT ROWID;
    CREATE TABLE blocks (
        owner      INTEGER NOT NULL,
        blocked    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (owner, blocked)
    ) WITHOUT ROWID;
    ALTER TABLE users ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: a message writes only its own rows. Heads and last seqs are read off the stream and
    // message indexes (`max(pos)`, `max(seq)`) instead of being rewritten per message, which
    // also rewrote two conversation indexes keyed by the last message's time.
    r#"
    DROP INDEX conversations_lo;
    DROP INDEX conversations_hi;
    CREATE INDEX conversations_lo ON conversations(user_lo);
    CREATE INDEX conversations_hi ON conversations(user_hi);
    ALTER TABLE conversations DROP COLUMN last_seq;
    ALTER TABLE conversations DROP COLUMN last_ts;
    ALTER TABLE users DROP COLUMN stream_head;
    "#,
    // 4: one row that the readiness check rewrites, so that `/readyz` proves a commit
    // reaches the disk (a full disk answers 503, not 200).
    r#"
    CREATE TABLE readiness (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        checked_at INTEGER NOT NULL
    );
    "#,
    // 5: sessions expire after a time unused, so each device keeps when it was last used.
    // A device from before this version counts as used now: nobody is logged out by the
    // upgrade itself.
    r#"
    ALTER TABLE devices ADD COLUMN last_active INTEGER NOT NULL DEFAULT 0;
    UPDATE devices SET last_active = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
        WHERE revoked_at IS NULL;
    "#,
    // 6: groups. A group's messages live in its own log (`messages` by conversation `g<id>`
    // and `seq`, recipient 0); nothing is written per member per message (the message-store
    // guide, "Group conversations: the layout"). A membership change is a message whose
    // `system` holds the event as JSON. Membership is kept as spans: the member sees `seq`
    // from `from_seq` to `to_seq` (the event that removed them; NULL while a member); a
    // re-added member has a second span, and the span carries the member's marks. Each device
    // keeps the highest `seq` it acknowledged per group.
    r#"
    ALTER TABLE messages ADD COLUMN system TEXT;
    CREATE TABLE groups (
        id          INTEGER PRIMARY KEY,
        title       TEXT    NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE group_members (
        group_id      INTEGER NOT NULL,
        user_id       INTEGER NOT NULL,
        from_seq      INTEGER NOT NULL,
        to_seq        INTEGER,
        role          TEXT    NOT NULL,
        read_seq      INTEGER NOT NULL DEFAULT 0,
        delivered_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (group_id, user_id, from_seq)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_user ON group_members(user_id, group_id);
    CREATE TABLE group_marks (
        device_id INTEGER NOT NULL,
        group_id  INTEGER NOT NULL,
        seq       INTEGER NOT NULL,
        PRIMARY KEY (device_id, group_id)
    ) WITHOUT ROWID;
    "#,
    // 7: push (`store::push`). One subscription per device, its kind's fields as JSON. The
    // outbox holds an intent per message (written only when a recipient has a subscription)
    // or per read; the pending rows are a device's notification per conversation: `due`
    // (to send at `next_at`) or `shown` (sent; kept so that a read elsewhere sends a clear).
    // `lease_until` keeps a claimed row from being claimed again before it passes. Every
    // change of a pending row takes a new `version` from one counter, so that a row deleted
    // and made again never matches a claim of the old one.
    r#"
    CREATE TABLE push_subscriptions (
        device_id   INTEGER PRIMARY KEY,
        user_id     INTEGER NOT NULL,
        id          INTEGER NOT NULL,
        kind        TEXT    NOT NULL,
        data        TEXT    NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX push_subscriptions_user ON push_subscriptions(user_id);
    CREATE TABLE push_outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        message_id   INTEGER,
        seq          INTEGER NOT NULL,
        user_id      INTEGER NOT NULL,
        device_id    INTEGER,
        created_at   INTEGER NOT NULL,
        lease_until  INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE push_pending (
        device_id    INTEGER NOT NULL,
        conversation TEXT    NOT NULL,
        user_id      INTEGER NOT NULL,
        kind         TEXT    NOT NULL,
        message_id   INTEGER,
        seq          INTEGER NOT NULL,
        state        TEXT    NOT NULL,
        shown_seq    INTEGER NOT NULL DEFAULT 0,
        version      INTEGER NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_at      INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        lease_until  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (device_id, conversation)
    ) WITHOUT ROWID;
    CREATE INDEX push_pending_due ON push_pending(next_at) WHERE state = 'due';
    CREATE TABLE push_versions (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL
    );
    INSERT INTO push_versions (id, version) VALUES (1, 0);
    CREATE TABLE push_keys (
        name TEXT PRIMARY KEY,
        pem  TEXT NOT NULL
    );
    "#,
];

pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, usize>(0))
        .map_err(internal)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Internal(format!(
            "database schema version {version} is newer than this confab ({}); upgrade confab",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(internal)?;
        tx.execute_batch(sql).map_err(internal)?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::now_ms;

    /// A database made before sessions expired: its devices count as used when it upgrades.
    #[test]
    fn devices_from_before_expiry_count_as_used_at_the_upgrade() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, username, username_key, password_hash, created_at)
                 VALUES (1, 'a', 'a', 'h', 1);
             INSERT INTO devices (id, user_id, token_hash, created_at) VALUES (10, 1, x'01', 1);
             INSERT INTO devices (id, user_id, token_hash, created_at, revoked_at)
                 VALUES (11, 1, x'02', 1, 2);",
        )
        .unwrap();
        let before = now_ms();
        migrate(&mut conn).unwrap();
        let after = now_ms();
        let active = |id: i64| -> i64 {
            conn.query_row("SELECT last_active FROM devices WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        };
        // julianday has millisecond precision; allow for its rounding.
        assert!(
            (before - 1..=after + 1).contains(&active(10)),
            "{}",
            active(10)
        );
        assert_eq!(active(11), 0, "a revoked device stays as it was");
    }
}
