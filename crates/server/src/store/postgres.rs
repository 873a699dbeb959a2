//! The cluster message store: PostgreSQL, shared by every node.
//!
//! Every operation is one short transaction on a pooled connection (deadpool, no TLS). Every
//! connection runs with `synchronous_commit = on`, so a write's `Ok` means its commit reached
//! the WAL on disk, as the SQLite store's fsync does. The guarantees of [`MessageStore`] are
//! kept by the schema and by row locks, never by one node's memory, because several nodes
//! write at once:
//!
//! - `seq`: `conversations.last_seq` is incremented in the append transaction; the row lock of
//!   the upsert serialises appends per conversation, and `UNIQUE (conversation, seq)` would
//!   reject any bug that produced a duplicate.
//! - stream positions: `users.stream_head` is incremented in the append transaction (see
//!   [`append_in`] for why this also makes positions visible in order).
//! - idempotency: `UNIQUE (sender, client_id)`; the loser of a race rolls back and returns the
//!   winner's message.
//!
//! Deadlocks and serialization failures are retried a few times; a connection that breaks
//! before `COMMIT` is sent is retried on a fresh one (nothing was written). A connection that
//! breaks during `COMMIT` is reported as `Unavailable`: the outcome is unknown there, and the
//! client's retry with the same `client_id` is what makes it exact.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use confab_protocol::{ConversationSummary, Id, Message, MessagePage, User};
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
    Transaction,
};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    Appended, ContactEntry, DeliveredAdvance, DeviceSession, MessageStore, NewDevice, NewMessage,
    ReadAdvance, SeedAccount, Side, StoreError, StoreResult, StreamEntry, UserRecord,
    conversation_id, side_of,
};

/// How long a caller waits for a pooled connection (or for a new one to be made) before the
/// store answers `Unavailable`: a down database fails requests, it does not hang them.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may queue for a free pooled connection. Longer than the connect
/// timeout: a hot conversation serialises its appends on one row lock, so under a burst many
/// requests wait their turn behind healthy connections; a database that is down still fails
/// fast through the create timeout.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long sent data may stay unacknowledged before a connection counts as broken.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// `check()` (behind `/readyz`) answers within this.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `close()` waits for operations in flight to hand their connections back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one operation when it meets a deadlock, a serialization failure or a broken
/// connection.
const MAX_ATTEMPTS: u32 = 5;
/// Accounts per multi-row insert in `seed_accounts`.
const SEED_CHUNK: usize = 5_000;
/// `pg_advisory_xact_lock` key that serialises migrations across nodes starting at once
/// ("confab" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6e66_6162;

/// Schema versions, applied in order inside one transaction and recorded in
/// `schema_migrations`. Append new migrations; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
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
];

const MESSAGE_COLUMNS: &str = "m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts";

/// The PostgreSQL message store, for several nodes sharing one database.
pub struct PostgresStore {
    pool: Pool,
}

type PgError = tokio_postgres::Error;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why one attempt at an operation failed.
enum Failure {
    /// Nothing was written and another attempt may succeed (deadlock, serialization failure,
    /// a connection that broke before `COMMIT`).
    Retry(StoreError),
    /// The answer.
    Final(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Final(e)
    }
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Self {
        classify(&e)
    }
}

/// The error's text with its cause (tokio-postgres' own `Display` omits the cause).
fn describe(e: &PgError) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn classify(e: &PgError) -> Failure {
    let text = describe(e);
    if let Some(code) = e.code() {
        if *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
        {
            return Failure::Retry(StoreError::Unavailable(format!("database busy: {text}")));
        }
        // The server ended the session (restart, failover): a new connection may work.
        if code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
        {
            return Failure::Retry(StoreError::Unavailable(text));
        }
        if *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || *code == SqlState::QUERY_CANCELED
        {
            return Failure::Final(StoreError::Unavailable(text));
        }
        return Failure::Final(StoreError::Internal(text));
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || text.starts_with("timeout") {
        return Failure::Retry(StoreError::Unavailable(text));
    }
    Failure::Final(StoreError::Internal(text))
}

/// `COMMIT` failed. A database error means it was rolled back (safe to retry if transient);
/// a broken connection leaves the outcome unknown, so that is final.
fn at_commit(e: PgError) -> Failure {
    match (e.code().is_some(), classify(&e)) {
        (true, failure) => failure,
        (false, Failure::Retry(e) | Failure::Final(e)) => Failure::Final(e),
    }
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => {
            StoreError::Unavailable("timed out waiting for a PostgreSQL connection".into())
        }
        PoolError::Closed => StoreError::Unavailable("store is closed".into()),
        PoolError::Backend(e) => {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL: {}", describe(&e)))
        }
        PoolError::PostCreateHook(e) => {
            StoreError::Unavailable(format!("cannot set up a PostgreSQL connection: {e}"))
        }
        PoolError::NoRuntimeSpecified => StoreError::Internal("pool has no runtime".into()),
    }
}

fn is_unique_violation(e: &PgError, constraint: Option<&str>) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && (constraint.is_none() || e.as_db_error().and_then(|d| d.constraint()) == constraint)
}

fn to_i64(v: u64) -> i64 {
    v as i64
}

fn db(id: Id) -> i64 {
    id.0 as i64
}

fn id_col(row: &Row, i: usize) -> Result<Id, PgError> {
    Ok(Id(row.try_get::<_, i64>(i)? as u64))
}

fn u64_col(row: &Row, i: usize) -> Result<u64, PgError> {
    Ok(row.try_get::<_, i64>(i)? as u64)
}

fn message_from_row(row: &Row, at: usize) -> Result<Message, PgError> {
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

async fn query(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Vec<Row>, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query(&stmt, params).await
}

async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_opt(&stmt, params).await
}

async fn query_one(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Row, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_one(&stmt, params).await
}

async fn execute(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, PgError> {
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, params).await
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL or key-value string) with a pool of up to
    /// `pool_size` connections and applies pending migrations. `Unavailable` if the database
    /// cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> StoreResult<PostgresStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("invalid PostgreSQL URL: {e}")))?;
        // `Ok` from a write must mean committed to disk whatever the server's default; a
        // later `-c` wins, so this overrides any setting in the URL.
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=on"),
            _ => "-c synchronous_commit=on".to_owned(),
        };
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CHECKOUT_TIMEOUT);
        }
        // A server that vanished without closing its sockets: fail the statement after this
        // long instead of waiting for the kernel's retransmission limit (minutes).
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("confab");
        }
        // `Fast` recycling checks `is_closed()` on checkout: a connection the server ended
        // (restart, failover) is dropped and replaced, so the store recovers by itself. One
        // that died unnoticed fails its first statement, which is retried on a new one.
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(QUEUE_TIMEOUT))
            .create_timeout(Some(CHECKOUT_TIMEOUT))
            .recycle_timeout(Some(CHECKOUT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let store = PostgresStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Applies pending migrations in one transaction. Nodes starting at once queue on the
    /// advisory lock; each then finds the versions the first one recorded.
    async fn migrate(&self) -> StoreResult<()> {
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
        let version = version.max(0) as usize;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Internal(format!(
                "database schema version {version} is newer than this confab ({}); upgrade confab",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.batch_execute(sql).await.map_err(store_err)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&((i + 1) as i32)],
            )
            .await
            .map_err(store_err)?;
            tracing::info!(version = i + 1, "applied store migration");
        }
        tx.commit().await.map_err(store_err)
    }

    /// Runs `op` on a pooled connection, again on a fresh one if it failed in a way that may
    /// pass (`Failure::Retry`). Each of `op`'s statements is a transaction of its own: reads,
    /// and writes made in one statement (the functions of migration 2).
    async fn run<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'c> Fn(&'c Object) -> BoxFuture<'c, Result<T, Failure>> + Send + Sync,
    {
        let op = &op;
        retrying(move || async move {
            let client = self.client().await.map_err(Failure::Final)?;
            op(&client).await
        })
        .await
    }

    /// Runs `op` in a transaction and commits it; retries the whole transaction on deadlock,
    /// serialization failure or a connection that broke before `COMMIT`.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send,
        F: for<'t> Fn(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, Failure>> + Send + Sync,
    {
        let op = &op;
        retrying(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let value = op(&tx).await?;
            tx.commit().await.map_err(at_commit)?;
            Ok(value)
        })
        .await
    }
}

/// Runs `attempt` until it succeeds, fails for good (`Failure::Final`) or has failed
/// [`MAX_ATTEMPTS`] times, backing off between tries.
async fn retrying<T, Fut>(mut attempt: impl FnMut() -> Fut) -> StoreResult<T>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Retry(e)) if tries < MAX_ATTEMPTS => backoff(&mut tries, &e).await,
            Err(Failure::Retry(e) | Failure::Final(e)) => return Err(e),
        }
    }
}

/// Waits a little longer each attempt, with jitter so that two deadlocked transactions do not
/// meet again.
async fn backoff(attempt: &mut u32, e: &StoreError) {
    tracing::debug!(attempt = *attempt, error = %e, "retrying a store transaction");
    let ms = 5 * u64::from(*attempt) + rand::random_range(0..10u64);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    *attempt += 1;
}

async fn user_exists(c: &impl GenericClient, user: Id) -> Result<bool, PgError> {
    Ok(
        query_opt(c, "SELECT 1 FROM users WHERE id = $1", &[&db(user)])
            .await?
            .is_some(),
    )
}

async fn has_contact(c: &impl GenericClient, owner: Id, contact: Id) -> Result<bool, PgError> {
    Ok(query_opt(
        c,
        "SELECT 1 FROM contacts WHERE owner = $1 AND contact = $2",
        &[&db(owner), &db(contact)],
    )
    .await?
    .is_some())
}

/// SQLSTATE of `confab_append`'s "no such user" (migration 2).
const NO_SUCH_USER: &str = "CF404";

/// The append: one call of `confab_append` (migration 2), a transaction of its own.
///
/// Stream positions must be assigned in commit order: a device that has read position `p+1`
/// must never later find a `p` that committed after it (catch-up would skip it forever). An
/// id or a timestamp gives no such order across nodes: a transaction can take a lower one and
/// commit after a higher one. So the position is taken from the user's row,
/// `UPDATE users SET stream_head = stream_head + 1 … RETURNING stream_head`, in the append's
/// transaction: the row lock is held until commit, so the transaction that gets `p+1` waits
/// until the one holding `p` has committed (or rolled back, and then `p` is reused: no gap).
/// PostgreSQL makes a commit visible before it releases its locks, so any snapshot that sees
/// `p+1` also sees `p`.
///
/// Each append locks two user rows (sender and recipient). Always lock the lower id first:
/// if a→b locked a then b while b→a locked b then a, each would wait for the other
/// (a deadlock, which PostgreSQL would break by failing one of them after a second).
/// The conversation row is locked after both, so every append takes its locks in one global
/// order: users ascending, then the conversation.
///
/// The function runs these steps server-side because each statement sent from here costs a
/// round trip and PostgreSQL's per-statement work: as a client-side transaction of eight
/// statements, one node stored at most 2,100-2,400 msgs/s, with PostgreSQL taking 1.4 cores
/// (docs/benchmarks/history.md).
async fn append_in(c: &impl GenericClient, m: &NewMessage) -> Result<Appended, Failure> {
    let (from, to) = (db(m.from), db(m.to));
    let (lo, hi) = if m.from <= m.to {
        (from, to)
    } else {
        (to, from)
    };
    let conversation = conversation_id(m.from, m.to);
    let row = query_one(
        c,
        "SELECT * FROM confab_append($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &db(m.id),
            &from,
            &to,
            &conversation,
            &lo,
            &hi,
            &m.client_id,
            &m.body,
            &m.ts,
        ],
    )
    .await
    .map_err(|e| match e.as_db_error() {
        Some(d) if d.code().code() == NO_SUCH_USER => {
            Failure::Final(StoreError::NotFound(d.message().to_owned()))
        }
        // Another node stored the same (sender, client_id) between the function's lookup and
        // its insert, which rolled the call back: the next attempt finds the stored message.
        _ if is_unique_violation(&e, Some("messages_sender_client_id")) => Failure::Retry(
            StoreError::Conflict("(sender, client_id) stored concurrently".into()),
        ),
        _ => classify(&e),
    })?;
    let status: &str = row.try_get(0)?;
    match status {
        "blocked" => Err(Failure::Final(StoreError::Forbidden(
            "the recipient does not accept your messages".into(),
        ))),
        "duplicate" => Ok(Appended::duplicate(message_from_row(&row, 1)?)),
        "stored" => Ok(Appended {
            message: Arc::new(message_from_row(&row, 1)?),
            sender_pos: u64_col(&row, 8)?,
            recipient_pos: u64_col(&row, 9)?,
            duplicate: false,
        }),
        other => Err(Failure::Final(StoreError::Internal(format!(
            "confab_append answered {other:?}"
        )))),
    }
}

/// An ack: one call of `confab_set_cursor` (migration 2), a transaction of its own.
///
/// The cursor never passes the user's stream head, and the delivered marks advance for the
/// conversations whose messages the newly acknowledged range holds. Those are updated one
/// statement per conversation, in id order: another device of this user acking at the same
/// time locks the same rows in the same order (no deadlock), and its update sees ours and does
/// not advance the mark a second time.
async fn set_cursor_in(
    c: &impl GenericClient,
    device: Id,
    pos: u64,
) -> Result<Vec<DeliveredAdvance>, Failure> {
    let rows = query(
        c,
        "SELECT * FROM confab_set_cursor($1, $2)",
        &[&db(device), &to_i64(pos)],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeliveredAdvance {
                conversation: row.try_get(0)?,
                peer: id_col(row, 1)?,
                seq: u64_col(row, 2)?,
            })
        })
        .collect()
}

async fn seed_in(tx: &Transaction<'_>, accounts: &[SeedAccount]) -> Result<(), Failure> {
    let users = tx
        .prepare_cached(
            "INSERT INTO users (id, username, username_key, password_hash, created_at)
             SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[])",
        )
        .await?;
    let devices = tx
        .prepare_cached(
            "INSERT INTO devices (id, user_id, name, token_hash, created_at)
             SELECT d, u, 'seed', t, c
             FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BYTEA[], $4::BIGINT[]) AS x(d, u, t, c)",
        )
        .await?;
    for chunk in accounts.chunks(SEED_CHUNK) {
        let ids: Vec<i64> = chunk.iter().map(|a| db(a.user_id)).collect();
        let names: Vec<&str> = chunk.iter().map(|a| a.username.as_str()).collect();
        let keys: Vec<String> = chunk
            .iter()
            .map(|a| a.username.to_ascii_lowercase())
            .collect();
        let hashes: Vec<&str> = chunk.iter().map(|a| a.password_hash.as_str()).collect();
        let nows: Vec<i64> = chunk.iter().map(|a| a.now).collect();
        tx.execute(&users, &[&ids, &names, &keys, &hashes, &nows])
            .await
            .map_err(|e| {
                if is_unique_violation(&e, None) {
                    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
                    Failure::Final(StoreError::Conflict(format!(
                        "a username is taken: {detail}"
                    )))
                } else {
                    classify(&e)
                }
            })?;
        let device_ids: Vec<i64> = chunk.iter().map(|a| db(a.device_id)).collect();
        let tokens: Vec<&[u8]> = chunk.iter().map(|a| &a.token_hash[..]).collect();
        tx.execute(&devices, &[&device_ids, &ids, &tokens, &nows])
            .await?;
    }
    Ok(())
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn create_user(
        &self,
        id: Id,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> StoreResult<User> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |tx| {
            let (username, hash) = (username.clone(), hash.clone());
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO users (id, username, username_key, password_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &db(id),
                        &username,
                        &username.to_ascii_lowercase(),
                        &hash,
                        &now,
                    ],
                )
                .await
                .map_err(|e| {
                    if is_unique_violation(&e, None) {
                        Failure::Final(StoreError::Conflict(format!(
                            "username {username:?} is taken"
                        )))
                    } else {
                        classify(&e)
                    }
                })?;
                Ok(User {
                    user_id: id,
                    username,
                })
            })
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let key = username.to_ascii_lowercase();
        self.run(move |c| {
            let key = key.clone();
            Box::pin(async move {
                let row = query_opt(
                    c,
                    "SELECT id, username, password_hash FROM users WHERE username_key = $1",
                    &[&key],
                )
                .await?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(UserRecord {
                    id: id_col(&r, 0)?,
                    username: r.try_get(1)?,
                    password_hash: r.try_get(2)?,
                }))
            })
        })
        .await
    }

    async fn user_by_id(&self, id: Id) -> StoreResult<Option<User>> {
        self.run(move |c| {
            Box::pin(async move {
                let row = query_opt(
                    c,
                    "SELECT id, username FROM users WHERE id = $1",
                    &[&db(id)],
                )
                .await?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(User {
                    user_id: id_col(&r, 0)?,
                    username: r.try_get(1)?,
                }))
            })
        })
        .await
    }

    async fn seed_accounts(&self, accounts: Vec<SeedAccount>) -> StoreResult<()> {
        let accounts = Arc::new(accounts);
        self.write(move |tx| {
            let accounts = accounts.clone();
            Box::pin(async move { seed_in(tx, &accounts).await })
        })
        .await
    }

    async fn create_device(&self, d: NewDevice) -> StoreResult<()> {
        self.write(move |tx| {
            let d = d.clone();
            Box::pin(async move {
                execute(
                    tx,
                    "INSERT INTO devices (id, user_id, name, token_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &db(d.id),
                        &db(d.user_id),
                        &d.name,
                        &&d.token_hash[..],
                        &d.now,
                    ],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>> {
        self.run(move |c| {
            Box::pin(async move {
                let row = query_opt(
                    c,
                    "SELECT user_id, id, cursor FROM devices
                     WHERE token_hash = $1 AND revoked_at IS NULL",
                    &[&&token_hash[..]],
                )
                .await?;
                let Some(r) = row else { return Ok(None) };
                Ok(Some(DeviceSession {
                    user_id: id_col(&r, 0)?,
                    device_id: id_col(&r, 1)?,
                    cursor: u64_col(&r, 2)?,
                }))
            })
        })
        .await
    }

    async fn revoke_device(&self, device_id: Id, now: i64) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move {
                execute(
                    tx,
                    "UPDATE devices SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[&db(device_id), &now],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn set_cursor(&self, device_id: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>> {
        // Retried like `append`: a repeated ack finds the cursor already moved and changes
        // nothing.
        self.run(move |c| Box::pin(set_cursor_in(c, device_id, pos)))
            .await
    }

    async fn add_contact(&self, owner: Id, contact: Id, now: i64) -> StoreResult<bool> {
        self.write(move |tx| {
            Box::pin(async move {
                if !user_exists(tx, contact).await? {
                    return Err(StoreError::NotFound(format!("no user {contact}")).into());
                }
                execute(
                    tx,
                    "INSERT INTO contacts (owner, contact, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&db(owner), &db(contact), &now],
                )
                .await?;
                Ok(has_contact(tx, contact, owner).await?)
            })
        })
        .await
    }

    async fn remove_contact(&self, owner: Id, contact: Id) -> StoreResult<bool> {
        self.write(move |tx| {
            Box::pin(async move {
                let removed = execute(
                    tx,
                    "DELETE FROM contacts WHERE owner = $1 AND contact = $2",
                    &[&db(owner), &db(contact)],
                )
                .await?;
                Ok(removed > 0 && has_contact(tx, contact, owner).await?)
            })
        })
        .await
    }

    async fn contacts(&self, owner: Id) -> StoreResult<Vec<ContactEntry>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    "SELECT c.contact, u.username,
                            EXISTS (SELECT 1 FROM contacts r
                                    WHERE r.owner = c.contact AND r.contact = c.owner),
                            EXISTS (SELECT 1 FROM blocks b
                                    WHERE (b.owner = c.owner AND b.blocked = c.contact)
                                       OR (b.owner = c.contact AND b.blocked = c.owner)),
                            u.last_seen
                     FROM contacts c JOIN users u ON u.id = c.contact
                     WHERE c.owner = $1 ORDER BY u.username_key",
                    &[&db(owner)],
                )
                .await?;
                let mut entries = Vec::with_capacity(rows.len());
                for r in rows {
                    entries.push(ContactEntry {
                        user_id: id_col(&r, 0)?,
                        username: r.try_get(1)?,
                        mutual: r.try_get(2)?,
                        blocked: r.try_get(3)?,
                        last_seen: r.try_get(4)?,
                    });
                }
                Ok(entries)
            })
        })
        .await
    }

    async fn friends(&self, user: Id) -> StoreResult<Vec<Id>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    "SELECT c.contact FROM contacts c
                     JOIN contacts r ON r.owner = c.contact AND r.contact = c.owner
                     WHERE c.owner = $1
                       AND NOT EXISTS (SELECT 1 FROM blocks b
                                       WHERE (b.owner = $1 AND b.blocked = c.contact)
                                          OR (b.owner = c.contact AND b.blocked = $1))",
                    &[&db(user)],
                )
                .await?;
                Ok(rows
                    .iter()
                    .map(|r| id_col(r, 0))
                    .collect::<Result<Vec<_>, _>>()?)
            })
        })
        .await
    }

    async fn set_block(&self, owner: Id, other: Id, blocked: bool, now: i64) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move {
                if !user_exists(tx, other).await? {
                    return Err(StoreError::NotFound(format!("no user {other}")).into());
                }
                if blocked {
                    execute(
                        tx,
                        "INSERT INTO blocks (owner, blocked, created_at) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[&db(owner), &db(other), &now],
                    )
                    .await?;
                } else {
                    execute(
                        tx,
                        "DELETE FROM blocks WHERE owner = $1 AND blocked = $2",
                        &[&db(owner), &db(other)],
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn blocked_between(&self, a: Id, b: Id) -> StoreResult<bool> {
        self.run(move |c| {
            Box::pin(async move {
                Ok(query_opt(
                    c,
                    "SELECT 1 FROM blocks WHERE (owner = $1 AND blocked = $2)
                                             OR (owner = $2 AND blocked = $1)",
                    &[&db(a), &db(b)],
                )
                .await?
                .is_some())
            })
        })
        .await
    }

    async fn set_last_seen(&self, user: Id, ts: i64) -> StoreResult<()> {
        self.write(move |tx| {
            Box::pin(async move {
                execute(
                    tx,
                    "UPDATE users SET last_seen = GREATEST(last_seen, $2) WHERE id = $1",
                    &[&db(user), &ts],
                )
                .await?;
                Ok(())
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
                let changed = execute(tx, sql, &[&conversation, &to_i64(seq)]).await?;
                Ok((changed > 0).then_some(ReadAdvance { peer, seq }))
            })
        })
        .await
    }

    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        // A connection lost mid-call leaves the outcome unknown, and the call is retried
        // anyway: it is idempotent, a retry of a stored message finds it by its `client_id`
        // and answers it as a duplicate.
        self.run(move |c| {
            let m = message.clone();
            Box::pin(async move { append_in(c, &m).await })
        })
        .await
    }

    async fn stream_head(&self, user: Id) -> StoreResult<u64> {
        self.run(move |c| {
            Box::pin(async move {
                match query_opt(
                    c,
                    "SELECT stream_head FROM users WHERE id = $1",
                    &[&db(user)],
                )
                .await?
                {
                    Some(r) => Ok(u64_col(&r, 0)?),
                    None => Ok(0),
                }
            })
        })
        .await
    }

    async fn stream_after(
        &self,
        user: Id,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = query(
                    c,
                    &format!(
                        "SELECT s.pos, {MESSAGE_COLUMNS} FROM stream s
                         JOIN messages m ON m.id = s.message_id
                         WHERE s.user_id = $1 AND s.pos > $2 ORDER BY s.pos LIMIT $3"
                    ),
                    &[
                        &db(user),
                        &to_i64(after),
                        &(limit.min(i64::MAX as usize) as i64),
                    ],
                )
                .await?;
                let mut entries = Vec::with_capacity(rows.len());
                for r in rows {
                    entries.push(StreamEntry {
                        pos: u64_col(&r, 0)?,
                        message: message_from_row(&r, 1)?,
                    });
                }
                Ok(entries)
            })
        })
        .await
    }

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
                    &[&db(user)],
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
        let before = before.map_or(i64::MAX, to_i64);
        // One more than asked tells whether older messages exist.
        let fetch = limit.min(i64::MAX as usize - 1) as i64 + 1;
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

    async fn check(&self) -> StoreResult<()> {
        let probe = async {
            let client = self.client().await?;
            // A real round trip; a standby (read-only after a failover) is not ready.
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(|e| match classify(&e) {
                    Failure::Retry(e) | Failure::Final(e) => e,
                })?;
            if in_recovery {
                return Err(StoreError::Unavailable(
                    "PostgreSQL is read-only (in recovery)".into(),
                ));
            }
            Ok(())
        };
        tokio::time::timeout(CHECK_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "PostgreSQL did not answer in time".into(),
                ))
            })
    }

    async fn close(&self) {
        // Later calls fail `Unavailable` (the pool answers `Closed`); idle connections are
        // dropped now, busy ones when their operation hands them back.
        self.pool.close();
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.pool.status().size > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// PostgreSQL-only behaviour the contract suite (`tests/store_contract.rs`) cannot see:
/// connection settings, concurrent migrations, recovery from broken connections and outages.
/// They run when `CONFAB_TEST_POSTGRES` holds a URL and are skipped otherwise.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    use super::*;

    const PG_ENV: &str = "CONFAB_TEST_POSTGRES";

    /// A fresh database, dropped at the end (best effort).
    struct TestDb {
        admin: tokio_postgres::Client,
        config: tokio_postgres::Config,
        name: String,
    }

    impl TestDb {
        async fn create() -> Option<TestDb> {
            let Ok(url) = std::env::var(PG_ENV) else {
                eprintln!("skipped: {PG_ENV} is not set");
                return None;
            };
            let (admin, conn) = tokio_postgres::connect(&url, NoTls)
                .await
                .expect("admin connection");
            tokio::spawn(conn);
            let name = format!("confab_t_{:016x}", rand::random::<u64>());
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let mut config: tokio_postgres::Config = url.parse().unwrap();
            config.dbname(&name);
            Some(TestDb {
                admin,
                config,
                name,
            })
        }

        /// A key-value connection string to this database, through `port` if given.
        fn url(&self, port: Option<u16>, extra: &str) -> String {
            let mut parts = vec![format!("dbname='{}'", self.name)];
            if let Some(user) = self.config.get_user() {
                parts.push(format!("user='{user}'"));
            }
            if let Some(pw) = self.config.get_password() {
                parts.push(format!("password='{}'", String::from_utf8_lossy(pw)));
            }
            if let Some(tokio_postgres::config::Host::Tcp(h)) = self.config.get_hosts().first() {
                parts.push(format!("host='{h}'"));
            }
            let port = port.or_else(|| self.config.get_ports().first().copied());
            if let Some(port) = port {
                parts.push(format!("port={port}"));
            }
            parts.push(extra.to_owned());
            parts.join(" ")
        }

        /// The server's address, for the proxy (TCP only).
        fn tcp_addr(&self) -> Option<String> {
            match self.config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => {
                    let port = self.config.get_ports().first().copied().unwrap_or(5432);
                    Some(format!("{h}:{port}"))
                }
                _ => None,
            }
        }

        async fn drop_db(self) {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if let Err(e) = self.admin.batch_execute(&sql).await {
                eprintln!("note: could not drop {}: {e}", self.name);
            }
        }
    }

    /// A store on `url` (a pool of `pool`) holding users 1 and 2, between whom [`msg`] sends.
    async fn two_users(url: &str, pool: usize) -> PostgresStore {
        let store = PostgresStore::connect(url, pool).await.unwrap();
        for id in [1, 2] {
            store
                .create_user(Id(id), &format!("user{id}"), "h", 1)
                .await
                .unwrap();
        }
        store
    }

    fn msg(id: u64, client_id: &str) -> NewMessage {
        NewMessage {
            id: Id(id),
            from: Id(1),
            to: Id(2),
            client_id: client_id.into(),
            body: "hi".into(),
            ts: 1,
        }
    }

    #[tokio::test]
    async fn every_connection_commits_synchronously() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        // Even when the URL asks for the opposite.
        let url = db.url(None, "options='-c synchronous_commit=off'");
        let store = PostgresStore::connect(&url, 3).await.unwrap();
        let clients = futures::future::try_join_all((0..3).map(|_| store.pool.get()))
            .await
            .unwrap();
        for c in &clients {
            let row = c.query_one("SHOW synchronous_commit", &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "on");
        }
        drop(clients);
        store.close().await;
        db.drop_db().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_at_once_migrate_once() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let url = db.url(None, "");
        let stores = futures::future::try_join_all((0..4).map(|_| PostgresStore::connect(&url, 1)))
            .await
            .expect("every node starts");
        let c = stores[0].pool.get().await.unwrap();
        let row = c
            .query_one("SELECT count(*), max(version) FROM schema_migrations", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), MIGRATIONS.len() as i64);
        assert_eq!(row.get::<_, i32>(1), MIGRATIONS.len() as i32);
        // A schema from a newer confab is refused, not used.
        c.execute("INSERT INTO schema_migrations (version) VALUES (999)", &[])
            .await
            .unwrap();
        drop(c);
        let newer = PostgresStore::connect(&url, 1).await;
        assert!(matches!(newer, Err(StoreError::Internal(_))));
        for s in &stores {
            s.close().await;
        }
        db.drop_db().await;
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let url = db.url(None, "");
        let store = two_users(&url, 2).await;
        let first = store.append(msg(10, "a")).await.unwrap();
        // Back to version 1 with its data: what a database of the previous release holds.
        let c = store.pool.get().await.unwrap();
        c.batch_execute(
            "DROP FUNCTION confab_append; DROP FUNCTION confab_set_cursor;
             DROP INDEX conversations_lo; DROP INDEX conversations_hi;
             CREATE INDEX conversations_lo ON conversations(user_lo, last_ts);
             CREATE INDEX conversations_hi ON conversations(user_hi, last_ts);
             ALTER TABLE conversations RESET (fillfactor);
             ALTER TABLE users RESET (fillfactor);
             ALTER TABLE devices RESET (fillfactor);
             DELETE FROM schema_migrations WHERE version >= 2",
        )
        .await
        .unwrap();
        drop(c);
        store.close().await;

        let store = PostgresStore::connect(&url, 2).await.unwrap();
        let second = store.append(msg(11, "b")).await.unwrap();
        assert_eq!(second.message.seq, first.message.seq + 1);
        assert_eq!(second.sender_pos, first.sender_pos + 1);
        assert_eq!(second.recipient_pos, first.recipient_pos + 1);
        let again = store.append(msg(12, "a")).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.message.id, first.message.id);
        let device = Id(20);
        store
            .create_device(NewDevice {
                id: device,
                user_id: Id(2),
                name: None,
                token_hash: [7; 32],
                now: 1,
            })
            .await
            .unwrap();
        let advanced = store.set_cursor(device, 99).await.unwrap();
        assert_eq!(advanced.len(), 1);
        assert_eq!(advanced[0].seq, second.message.seq);
        assert_eq!(advanced[0].peer, Id(1));
        store.close().await;
        db.drop_db().await;
    }

    #[tokio::test]
    async fn a_message_updates_its_conversation_in_place() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let url = db.url(None, "");
        let store = two_users(&url, 1).await;
        for i in 0..20u64 {
            // A later `ts` each time, so that an index on it would have to change.
            let m = NewMessage {
                ts: i as i64 + 1,
                ..msg(100 + i, &format!("c{i}"))
            };
            store.append(m).await.unwrap();
        }
        // A backend reports its table statistics when it ends.
        store.close().await;
        let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        let mut counts = (0, 0);
        for _ in 0..50 {
            let row = c
                .query_one(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
                     WHERE relname = 'conversations'",
                    &[],
                )
                .await
                .unwrap();
            counts = (row.get::<_, i64>(0), row.get::<_, i64>(1));
            if counts.0 >= 19 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The first message made the row; each later one updated it, all without index entries.
        assert_eq!(counts, (19, 19), "(updates, heap-only updates)");
        drop(c);
        db.drop_db().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_whose_session_ends_mid_call_is_retried_and_stored_once() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let url = db.url(None, "");
        let store = Arc::new(two_users(&url, 2).await);
        // Hold user 1's row, so that the append waits inside `confab_append`.
        let (mut blocker, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(conn);
        let tx = blocker.transaction().await.unwrap();
        tx.execute("SELECT 1 FROM users WHERE id = 1 FOR UPDATE", &[])
            .await
            .unwrap();
        let appending = tokio::spawn({
            let store = store.clone();
            async move { store.append(msg(10, "a")).await }
        });
        // End the waiting call's session, as a failover would, then let the row go.
        let mut ended = 0;
        for _ in 0..100 {
            ended = db
                .admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND wait_event_type = 'Lock'
                       AND query LIKE '%confab_append%'",
                    &[&db.name],
                )
                .await
                .unwrap();
            if ended > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ended, 1, "the append never waited on the lock");
        tx.rollback().await.unwrap();
        let appended = appending
            .await
            .unwrap()
            .expect("retried on a fresh connection");
        assert!(
            !appended.duplicate,
            "the ended call rolled back: this is the first store"
        );
        assert_eq!(appended.message.seq, 1);
        let stored: i64 = blocker
            .query_one("SELECT count(*) FROM messages", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(stored, 1);
        drop(blocker);
        store.close().await;
        db.drop_db().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_when_the_server_ends_its_sessions() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let store = two_users(&db.url(None, ""), 4).await;
        // Fill the pool, then end every session as a server restart would.
        let held = futures::future::try_join_all((0..4).map(|_| store.pool.get()))
            .await
            .unwrap();
        drop(held);
        let ended = db
            .admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db.name],
            )
            .await
            .unwrap();
        assert!(ended >= 4, "terminated {ended}");
        // Every call succeeds: dead connections are replaced, not handed out.
        for i in 0..10u64 {
            let r = store.append(msg(100 + i, &format!("c{i}"))).await.unwrap();
            assert_eq!(r.message.seq, i + 1);
        }
        store.check().await.unwrap();
        store.close().await;
        db.drop_db().await;
    }

    /// A TCP forwarder to PostgreSQL that can be switched off (connections cut, port closed)
    /// and on again (same port).
    struct Proxy {
        port: u16,
        target: String,
        tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    }

    impl Proxy {
        async fn start(target: String) -> Proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let proxy = Proxy {
                port,
                target,
                tasks: Arc::default(),
            };
            proxy.serve(listener);
            proxy
        }

        fn serve(&self, listener: TcpListener) {
            let (target, tasks) = (self.target.clone(), self.tasks.clone());
            let accept = tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let target = target.clone();
                    let pipe = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    tasks.lock().unwrap().push(pipe);
                }
            });
            self.tasks.lock().unwrap().push(accept);
        }

        fn down(&self) {
            for t in self.tasks.lock().unwrap().drain(..) {
                t.abort();
            }
        }

        async fn up(&self) {
            let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
            self.serve(listener);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fails_fast_while_down_and_recovers_by_itself() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let Some(target) = db.tcp_addr() else {
            eprintln!("skipped: {PG_ENV} is not a TCP address");
            return db.drop_db().await;
        };
        let proxy = Proxy::start(target).await;
        let store = two_users(&db.url(Some(proxy.port), ""), 4).await;
        store.append(msg(100, "a")).await.unwrap();

        proxy.down();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let err = store.check().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(started.elapsed() < CHECK_TIMEOUT + Duration::from_millis(500));
        let started = Instant::now();
        let err = store.append(msg(101, "b")).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = store.stream_head(Id(1)).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(
            started.elapsed() < 2 * CHECKOUT_TIMEOUT,
            "{:?}",
            started.elapsed()
        );

        proxy.up().await;
        store.check().await.expect("ready again");
        let r = store.append(msg(101, "b")).await.unwrap();
        assert!(!r.duplicate);
        assert_eq!((r.message.seq, r.sender_pos, r.recipient_pos), (2, 2, 2));
        store.close().await;
        proxy.down();
        db.drop_db().await;
    }
}
