//! The cluster store's schema, as the migrations applied when a node connects, and the lock
//! that lets nodes starting at once apply them once.

use super::PostgresStore;
use super::retry::{Failure, PgError, classify};
use crate::store::{StoreError, StoreResult};

/// `pg_advisory_xact_lock` key that serialises migrations across nodes starting at once
/// ("confab" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6e66_6162;

/// Schema versions, applied in order inside one transaction and recorded in
/// `schema_migrations`. Append new migrations; never edit one that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: accounts, devices, conversations, messages, per-user streams, contacts, blocks.
    // Ids are u64 stored as BIGINT (two's complement, as in SQLite). `username_key` (the
    // ASCII-lowercased name) uses the "C" collation so that its order is byte order whatever
    // the database's locale, as in SQLite.
    r#"
    CREATE TABLE users (
        id            BIGINT  PRIMARY KEY,
        username      TEXT    NOT NULL,
        username_key  TEXT    COLLATE "C" NOT NULL,
        password_hash TEXT    NOT NULL,
        created_at    BIGINT  NOT NULL,
        stream_head   BIGINT  NOT NULL DEFAULT 0,
        last_seen     BIGINT  NOT NULL DEFAULT 0,
        CONSTRAINT users_username_key UNIQUE (username_key)
    );
    CREATE TABLE devices (
        id          BIGINT  PRIMARY KEY,
        user_id     BIGINT  NOT NULL REFERENCES users(id),
        name        TEXT,
        token_hash  BYTEA   NOT NULL UNIQUE,
        created_at  BIGINT  NOT NULL,
        revoked_at  BIGINT,
        cursor      BIGINT  NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_user ON devices(user_id);
    CREATE TABLE conversations (
        id            TEXT    COLLATE "C" PRIMARY KEY,
        user_lo       BIGINT  NOT NULL,
        user_hi       BIGINT  NOT NULL,
        last_seq      BIGINT  NOT NULL,
        last_ts       BIGINT  NOT NULL,
        read_lo       BIGINT  NOT NULL DEFAULT 0,
        read_hi       BIGINT  NOT NULL DEFAULT 0,
        delivered_lo  BIGINT  NOT NULL DEFAULT 0,
        delivered_hi  BIGINT  NOT NULL DEFAULT 0
    );
    CREATE INDEX conversations_lo ON conversations(user_lo, last_ts);
    CREATE INDEX conversations_hi ON conversations(user_hi, last_ts);
    CREATE TABLE messages (
        id            BIGINT  PRIMARY KEY,
        conversation  TEXT    COLLATE "C" NOT NULL,
        seq           BIGINT  NOT NULL,
        sender        BIGINT  NOT NULL,
        recipient     BIGINT  NOT NULL,
        client_id     TEXT    NOT NULL,
        body          TEXT    NOT NULL,
        ts            BIGINT  NOT NULL,
        CONSTRAINT messages_conversation_seq UNIQUE (conversation, seq),
        CONSTRAINT messages_sender_client_id UNIQUE (sender, client_id)
    );
    CREATE TABLE stream (
        user_id    BIGINT NOT NULL,
        pos        BIGINT NOT NULL,
        message_id BIGINT NOT NULL,
        PRIMARY KEY (user_id, pos)
    );
    CREATE TABLE contacts (
        owner      BIGINT NOT NULL,
        contact    BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (owner, contact)
    );
    CREATE TABLE blocks (
        owner      BIGINT NOT NULL,
        blocked    BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (owner, blocked)
    );
    "#,
    // 2: the append and the ack as functions. A message costs one statement and one round
    // trip instead of eight (BEGIN, the repeat and block lookups, two head bumps, the
    // conversation, the message and stream rows, COMMIT). It takes the same steps in the same
    // order as the transaction it replaces (see `append_in`). A refusal after a change raises
    // an error, which rolls the whole call back; the `CF` SQLSTATE class is confab's own.
    r#"
    CREATE FUNCTION confab_append(
        p_id BIGINT, p_from BIGINT, p_to BIGINT, p_conversation TEXT, p_lo BIGINT,
        p_hi BIGINT, p_client_id TEXT, p_body TEXT, p_ts BIGINT,
        OUT o_status TEXT, OUT o_id BIGINT, OUT o_conversation TEXT, OUT o_seq BIGINT,
        OUT o_sender BIGINT, OUT o_recipient BIGINT, OUT o_body TEXT, OUT o_ts BIGINT,
        OUT o_sender_pos BIGINT, OUT o_recipient_pos BIGINT)
    LANGUAGE plpgsql AS $fn$
    BEGIN
        -- The common repeat (a client resending after a lost `sent`): the stored row.
        SELECT m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts
          INTO o_id, o_conversation, o_seq, o_sender, o_recipient, o_body, o_ts
          FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
        IF FOUND THEN
            o_status := 'duplicate';
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM blocks b WHERE b.owner = p_to AND b.blocked = p_from) THEN
            o_status := 'blocked';
            RETURN;
        END IF;
        -- Heads in ascending id order; a message to oneself bumps the recipient first.
        IF p_to <= p_from THEN
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_to
                RETURNING stream_head INTO o_recipient_pos;
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_from
                RETURNING stream_head INTO o_sender_pos;
        ELSE
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_from
                RETURNING stream_head INTO o_sender_pos;
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_to
                RETURNING stream_head INTO o_recipient_pos;
        END IF;
        IF o_recipient_pos IS NULL THEN
            RAISE EXCEPTION 'no user %', p_to USING ERRCODE = 'CF404';
        END IF;
        IF o_sender_pos IS NULL THEN
            RAISE EXCEPTION 'no user %', p_from USING ERRCODE = 'CF404';
        END IF;
        INSERT INTO conversations AS c (id, user_lo, user_hi, last_seq, last_ts)
            VALUES (p_conversation, p_lo, p_hi, 1, p_ts)
            ON CONFLICT (id) DO UPDATE
                SET last_seq = c.last_seq + 1,
                    last_ts = GREATEST(c.last_ts, EXCLUDED.last_ts)
            RETURNING c.last_seq INTO o_seq;
        INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
            VALUES (p_id, p_conversation, o_seq, p_from, p_to, p_client_id, p_body, p_ts);
        INSERT INTO stream (user_id, pos, message_id)
            VALUES (p_to, o_recipient_pos, p_id), (p_from, o_sender_pos, p_id);
        o_status := 'stored';
        o_id := p_id;
        o_conversation := p_conversation;
        o_sender := p_from;
        o_recipient := p_to;
        o_body := p_body;
        o_ts := p_ts;
    END
    $fn$;

    -- An ack as one function, for the same reason: the device's new cursor, and the
    -- conversations whose delivered mark it advanced (see `set_cursor_in`).
    CREATE FUNCTION confab_set_cursor(p_device BIGINT, p_pos BIGINT)
    RETURNS TABLE (o_conversation TEXT, o_peer BIGINT, o_seq BIGINT)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        v_user BIGINT;
        v_old  BIGINT;
        v_head BIGINT;
        v_new  BIGINT;
        r      RECORD;
    BEGIN
        -- The device row stays locked until commit, so two acks of one device apply in turn.
        SELECT d.user_id, d.cursor, u.stream_head INTO v_user, v_old, v_head
          FROM devices d JOIN users u ON u.id = d.user_id
          WHERE d.id = p_device FOR UPDATE OF d;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        v_new := LEAST(p_pos, v_head);
        IF v_new <= v_old THEN
            RETURN;
        END IF;
        UPDATE devices SET cursor = v_new WHERE id = p_device;
        -- Each statement of a volatile function takes a new snapshot, newer than the one
        -- that read the head: every position up to it has committed.
        FOR r IN
            SELECT m.conversation, m.sender, max(m.seq) AS seq FROM stream s
              JOIN messages m ON m.id = s.message_id
              WHERE s.user_id = v_user AND s.pos > v_old AND s.pos <= v_new
                AND m.recipient = v_user
              GROUP BY m.conversation, m.sender
              ORDER BY m.conversation
        LOOP
            UPDATE conversations SET
                delivered_lo = CASE WHEN user_lo = v_user
                                    THEN GREATEST(delivered_lo, r.seq) ELSE delivered_lo END,
                delivered_hi = CASE WHEN user_hi = v_user
                                    THEN GREATEST(delivered_hi, r.seq) ELSE delivered_hi END
              WHERE id = r.conversation
                AND ((user_lo = v_user AND delivered_lo < r.seq)
                  OR (user_hi = v_user AND delivered_hi < r.seq));
            IF FOUND THEN
                o_conversation := r.conversation;
                o_peer := r.sender;
                o_seq := r.seq;
                RETURN NEXT;
            END IF;
        END LOOP;
    END
    $fn$;
    "#,
    // 3: a message's conversation update stays in place. With `last_ts` in the two per-user
    // indexes every message wrote a new entry into each of them and left the old row version
    // for VACUUM; without it the update is HOT (heap-only: no index entry, and the page
    // prunes the old version itself) whenever the page has room, which the fill factors
    // leave. The conversation list is one user's few rows, sorted after the lookup anyway.
    r#"
    DROP INDEX conversations_lo;
    DROP INDEX conversations_hi;
    CREATE INDEX conversations_lo ON conversations(user_lo);
    CREATE INDEX conversations_hi ON conversations(user_hi);
    ALTER TABLE conversations SET (fillfactor = 50);
    ALTER TABLE users SET (fillfactor = 50);
    ALTER TABLE devices SET (fillfactor = 50);
    "#,
    // 4: one row that the readiness check rewrites, so that `/readyz` proves a commit.
    r#"
    CREATE TABLE readiness (
        id         SMALLINT PRIMARY KEY CHECK (id = 1),
        checked_at BIGINT   NOT NULL
    );
    "#,
    // 5: sessions expire after a time unused, so each device keeps when it was last used.
    // A device from before this version counts as used now: nobody is logged out by the
    // upgrade itself. The default is evaluated once, at this ALTER, and kept in the catalog
    // for the existing rows, so the table is not rewritten; new rows always name the column,
    // so the default is dropped again.
    r#"
    ALTER TABLE devices ADD COLUMN last_active BIGINT NOT NULL
        DEFAULT (extract(epoch FROM now()) * 1000)::BIGINT;
    ALTER TABLE devices ALTER COLUMN last_active DROP DEFAULT;
    "#,
    // 6: groups, as in the embedded store (its migration 6 says why spans and marks). The
    // group's row also holds its `last_seq`, the counter its appends lock, as a 1:1
    // conversation's row does.
    r#"
    ALTER TABLE messages ADD COLUMN system TEXT;
    CREATE TABLE groups (
        id          BIGINT  PRIMARY KEY,
        title       TEXT    NOT NULL,
        created_at  BIGINT  NOT NULL,
        last_seq    BIGINT  NOT NULL DEFAULT 0
    );
    CREATE TABLE group_members (
        group_id      BIGINT  NOT NULL,
        user_id       BIGINT  NOT NULL,
        from_seq      BIGINT  NOT NULL,
        to_seq        BIGINT,
        role          TEXT    NOT NULL,
        read_seq      BIGINT  NOT NULL DEFAULT 0,
        delivered_seq BIGINT  NOT NULL DEFAULT 0,
        PRIMARY KEY (group_id, user_id, from_seq)
    );
    CREATE INDEX group_members_user ON group_members(user_id, group_id);
    CREATE TABLE group_marks (
        device_id BIGINT NOT NULL,
        group_id  BIGINT NOT NULL,
        seq       BIGINT NOT NULL,
        PRIMARY KEY (device_id, group_id)
    );
    "#,
    // 7: a group send as one function, for the reason of migration 2: one round trip instead
    // of a transaction of six statements (see `groups::append_group_in` for its steps). The
    // group's row and a member's span are rewritten by every send and every ack, so they get
    // the room of migration 3 to stay in place.
    r#"
    CREATE FUNCTION confab_append_group(
        p_id BIGINT, p_group BIGINT, p_conversation TEXT, p_from BIGINT, p_client_id TEXT,
        p_body TEXT, p_ts BIGINT,
        OUT o_status TEXT, OUT o_id BIGINT, OUT o_conversation TEXT, OUT o_seq BIGINT,
        OUT o_sender BIGINT, OUT o_recipient BIGINT, OUT o_body TEXT, OUT o_ts BIGINT,
        OUT o_system TEXT, OUT o_recipients BIGINT[])
    LANGUAGE plpgsql AS $fn$
    BEGIN
        -- A repeat is answered first: a sender removed since still learns its send's outcome.
        SELECT m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts, m.system
          INTO o_id, o_conversation, o_seq, o_sender, o_recipient, o_body, o_ts, o_system
          FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
        IF FOUND THEN
            o_status := 'duplicate';
            RETURN;
        END IF;
        -- The group's row lock, held until commit, puts every write to the group in turn.
        UPDATE groups SET last_seq = last_seq + 1 WHERE id = p_group
            RETURNING last_seq INTO o_seq;
        IF NOT FOUND THEN
            o_status := 'not_member';
            RETURN;
        END IF;
        -- A new snapshot, taken with the lock held: the membership every earlier change left.
        IF NOT EXISTS (SELECT 1 FROM group_members gm
                       WHERE gm.group_id = p_group AND gm.user_id = p_from
                         AND gm.to_seq IS NULL) THEN
            RAISE EXCEPTION 'no such conversation' USING ERRCODE = 'CF404';
        END IF;
        INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
            VALUES (p_id, p_conversation, o_seq, p_from, 0, p_client_id, p_body, p_ts);
        SELECT array_agg(gm.user_id ORDER BY gm.from_seq, gm.role <> 'owner', gm.user_id)
          INTO o_recipients
          FROM group_members gm WHERE gm.group_id = p_group AND gm.to_seq IS NULL;
        o_status := 'stored';
        o_id := p_id;
        o_conversation := p_conversation;
        o_sender := p_from;
        o_recipient := 0;
        o_body := p_body;
        o_ts := p_ts;
    END
    $fn$;
    ALTER TABLE groups SET (fillfactor = 50);
    ALTER TABLE group_members SET (fillfactor = 50);
    "#,
    // 8: push (`store::push`): subscriptions, the outbox of intents, each device's pending
    // notification per conversation, the VAPID key. A message's intent is written by its own
    // append, so both sends get a function that takes the steps of migration 2's or 7's and
    // then writes the intent, still one round trip. The steps are repeated rather than the
    // older function called: a nested call costs more than the rest of the intent. They are
    // new functions rather than replacements: a node of the previous version keeps its
    // prepared `SELECT * FROM confab_append(…)`, whose result a new OUT column would change
    // under it ("cached plan must not change result type"); its sends just write no intent
    // until it is upgraded.
    //
    // `version` is drawn from a sequence, not counted per row: a row deleted and made again
    // never repeats a version that an old claim still holds.
    r#"
    CREATE TABLE push_subscriptions (
        device_id  BIGINT  PRIMARY KEY,
        user_id    BIGINT  NOT NULL,
        id         BIGINT  NOT NULL,
        kind       TEXT    NOT NULL,
        data       TEXT    NOT NULL,
        created_at BIGINT  NOT NULL
    );
    CREATE INDEX push_subscriptions_user ON push_subscriptions(user_id);
    CREATE TABLE push_outbox (
        id           BIGSERIAL PRIMARY KEY,
        conversation TEXT    COLLATE "C" NOT NULL,
        kind         TEXT    NOT NULL,
        message_id   BIGINT,
        seq          BIGINT  NOT NULL,
        user_id      BIGINT  NOT NULL,
        device_id    BIGINT,
        created_at   BIGINT  NOT NULL,
        lease_until  BIGINT  NOT NULL DEFAULT 0
    );
    CREATE TABLE push_pending (
        device_id    BIGINT,
        conversation TEXT    COLLATE "C",
        user_id      BIGINT  NOT NULL,
        kind         TEXT    NOT NULL,
        message_id   BIGINT,
        seq          BIGINT  NOT NULL,
        state        TEXT    NOT NULL,
        shown_seq    BIGINT  NOT NULL DEFAULT 0,
        version      BIGINT  NOT NULL,
        attempts     INT     NOT NULL DEFAULT 0,
        next_at      BIGINT  NOT NULL,
        created_at   BIGINT  NOT NULL,
        lease_until  BIGINT  NOT NULL DEFAULT 0,
        PRIMARY KEY (device_id, conversation)
    );
    CREATE INDEX push_pending_due ON push_pending(next_at) WHERE state = 'due';
    CREATE SEQUENCE push_pending_versions;
    CREATE TABLE push_keys (
        name TEXT PRIMARY KEY,
        pem  TEXT NOT NULL
    );

    -- A 1:1 send: migration 2's steps, then the intent when the recipient (never the
    -- sender, as in a message to oneself) has a subscribed device. A repeat writes none.
    CREATE FUNCTION confab_append_notify(
        p_id BIGINT, p_from BIGINT, p_to BIGINT, p_conversation TEXT, p_lo BIGINT,
        p_hi BIGINT, p_client_id TEXT, p_body TEXT, p_ts BIGINT,
        OUT o_status TEXT, OUT o_id BIGINT, OUT o_conversation TEXT, OUT o_seq BIGINT,
        OUT o_sender BIGINT, OUT o_recipient BIGINT, OUT o_body TEXT, OUT o_ts BIGINT,
        OUT o_sender_pos BIGINT, OUT o_recipient_pos BIGINT, OUT o_notify BOOLEAN)
    LANGUAGE plpgsql AS $fn$
    BEGIN
        o_notify := false;
        -- The common repeat (a client resending after a lost `sent`): the stored row.
        SELECT m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts
          INTO o_id, o_conversation, o_seq, o_sender, o_recipient, o_body, o_ts
          FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
        IF FOUND THEN
            o_status := 'duplicate';
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM blocks b WHERE b.owner = p_to AND b.blocked = p_from) THEN
            o_status := 'blocked';
            RETURN;
        END IF;
        -- Heads in ascending id order; a message to oneself bumps the recipient first.
        IF p_to <= p_from THEN
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_to
                RETURNING stream_head INTO o_recipient_pos;
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_from
                RETURNING stream_head INTO o_sender_pos;
        ELSE
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_from
                RETURNING stream_head INTO o_sender_pos;
            UPDATE users SET stream_head = stream_head + 1 WHERE id = p_to
                RETURNING stream_head INTO o_recipient_pos;
        END IF;
        IF o_recipient_pos IS NULL THEN
            RAISE EXCEPTION 'no user %', p_to USING ERRCODE = 'CF404';
        END IF;
        IF o_sender_pos IS NULL THEN
            RAISE EXCEPTION 'no user %', p_from USING ERRCODE = 'CF404';
        END IF;
        INSERT INTO conversations AS c (id, user_lo, user_hi, last_seq, last_ts)
            VALUES (p_conversation, p_lo, p_hi, 1, p_ts)
            ON CONFLICT (id) DO UPDATE
                SET last_seq = c.last_seq + 1,
                    last_ts = GREATEST(c.last_ts, EXCLUDED.last_ts)
            RETURNING c.last_seq INTO o_seq;
        INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
            VALUES (p_id, p_conversation, o_seq, p_from, p_to, p_client_id, p_body, p_ts);
        INSERT INTO stream (user_id, pos, message_id)
            VALUES (p_to, o_recipient_pos, p_id), (p_from, o_sender_pos, p_id);
        IF p_to <> p_from
           AND EXISTS (SELECT 1 FROM push_subscriptions s WHERE s.user_id = p_to) THEN
            INSERT INTO push_outbox (conversation, kind, message_id, seq, user_id, created_at)
                VALUES (p_conversation, 'message', p_id, o_seq, p_from, p_ts);
            o_notify := true;
        END IF;
        o_status := 'stored';
        o_id := p_id;
        o_conversation := p_conversation;
        o_sender := p_from;
        o_recipient := p_to;
        o_body := p_body;
        o_ts := p_ts;
    END
    $fn$;

    -- A group send: migration 7's steps, then the intent when a member at the message's seq
    -- (the recipients read under the group's lock) other than the sender has a subscribed
    -- device.
    CREATE FUNCTION confab_append_group_notify(
        p_id BIGINT, p_group BIGINT, p_conversation TEXT, p_from BIGINT, p_client_id TEXT,
        p_body TEXT, p_ts BIGINT,
        OUT o_status TEXT, OUT o_id BIGINT, OUT o_conversation TEXT, OUT o_seq BIGINT,
        OUT o_sender BIGINT, OUT o_recipient BIGINT, OUT o_body TEXT, OUT o_ts BIGINT,
        OUT o_system TEXT, OUT o_recipients BIGINT[], OUT o_notify BOOLEAN)
    LANGUAGE plpgsql AS $fn$
    BEGIN
        o_notify := false;
        -- A repeat is answered first: a sender removed since still learns its send's outcome.
        SELECT m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts, m.system
          INTO o_id, o_conversation, o_seq, o_sender, o_recipient, o_body, o_ts, o_system
          FROM messages m WHERE m.sender = p_from AND m.client_id = p_client_id;
        IF FOUND THEN
            o_status := 'duplicate';
            RETURN;
        END IF;
        -- The group's row lock, held until commit, puts every write to the group in turn.
        UPDATE groups SET last_seq = last_seq + 1 WHERE id = p_group
            RETURNING last_seq INTO o_seq;
        IF NOT FOUND THEN
            o_status := 'not_member';
            RETURN;
        END IF;
        -- A new snapshot, taken with the lock held: the membership every earlier change left.
        IF NOT EXISTS (SELECT 1 FROM group_members gm
                       WHERE gm.group_id = p_group AND gm.user_id = p_from
                         AND gm.to_seq IS NULL) THEN
            RAISE EXCEPTION 'no such conversation' USING ERRCODE = 'CF404';
        END IF;
        INSERT INTO messages (id, conversation, seq, sender, recipient, client_id, body, ts)
            VALUES (p_id, p_conversation, o_seq, p_from, 0, p_client_id, p_body, p_ts);
        SELECT array_agg(gm.user_id ORDER BY gm.from_seq, gm.role <> 'owner', gm.user_id)
          INTO o_recipients
          FROM group_members gm WHERE gm.group_id = p_group AND gm.to_seq IS NULL;
        IF EXISTS (SELECT 1 FROM push_subscriptions s
                   WHERE s.user_id = ANY(o_recipients) AND s.user_id <> p_from) THEN
            INSERT INTO push_outbox (conversation, kind, message_id, seq, user_id, created_at)
                VALUES (p_conversation, 'message', p_id, o_seq, p_from, p_ts);
            o_notify := true;
        END IF;
        o_status := 'stored';
        o_id := p_id;
        o_conversation := p_conversation;
        o_sender := p_from;
        o_recipient := 0;
        o_body := p_body;
        o_ts := p_ts;
    END
    $fn$;
    "#,
];

impl PostgresStore {
    /// Applies pending migrations in one transaction. Nodes starting at once queue on the
    /// advisory lock; each then finds the versions the first one recorded.
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        let store_err = |e: PgError| match classify(&e) {
            Failure::Retry(e) | Failure::Final(e) => e,
        };
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(store_err)?;
        tx.batch_execute(&format!(
            "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER     PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(store_err)?;
        let version: i32 = tx
            .query_one(
                "SELECT COALESCE(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(store_err)?;
        let version = usize::try_from(version).unwrap_or(0);
        if version > MIGRATIONS.len() {
            return Err(StoreError::Internal(format!(
                "database schema version {version} is newer than this confab ({}); upgrade confab",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(sql).await.map_err(store_err)?;
            let recorded = i32::try_from(i + 1)
                .map_err(|_| StoreError::Internal("too many migrations".into()))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&recorded],
            )
            .await
            .map_err(store_err)?;
            tracing::info!(version = i + 1, "applied store migration");
        }
        tx.commit().await.map_err(store_err)
    }
}
