//! The embedded message store: SQLite in WAL mode with `synchronous=FULL` and group commit.
//!
//! One writer thread owns the only writable connection. Every write is a job sent to it; the
//! thread takes all jobs waiting (up to a batch limit), runs them in one transaction, commits
//! once (one fsync for the whole batch), and only then answers each job. So a caller's `Ok`
//! always means "fsync'd", while throughput is not capped at one message per fsync. Reads run
//! on a small pool of read-only connections, which WAL lets proceed while the writer commits.
//!
//! Appending a message is the hot path and is shaped for it: stream heads and conversation
//! `seq`s are derived from the rows themselves (`max(pos)`, `max(seq)`) and kept in the
//! writer's memory, so a message writes only its own row and its two stream rows, and it runs
//! without a savepoint (see [`Writer::poisoned`]). Every other write runs in its own savepoint,
//! so one failing job never takes the rest of its batch down.
//!
//! An append's future needs no polling to go on: once queued, the job is run and committed by
//! the writer thread whatever becomes of the future, and nothing of the store's (no lock, no
//! connection) is held while it waits. So a socket may poll its sends itself, alongside its
//! other work, instead of giving each a task. That is not so for PostgreSQL, whose append
//! holds a pooled connection until its future finishes: a send left unpolled along with a
//! busy socket's task would keep that connection checked out meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use confab_protocol::{ConversationSummary, Id, Message, MessagePage, User};
use prometheus::{Histogram, IntCounter};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    Accounts, Appended, ContactEntry, Contacts, Conversations, DeliveredAdvance, DeviceSession,
    LoginState, MessageStore, NewDevice, NewMessage, ReadAdvance, SeedAccount, Side, StoreError,
    StoreResult, StreamEntry, Streams, UserRecord, conversation_id, side_of,
};

/// Jobs waiting for the writer beyond which callers wait (backpressure instead of memory);
/// never fewer than one batch, or a batch could not fill up.
const WRITE_QUEUE: usize = 16 * 1024;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;
/// Read connections kept open for reuse.
const READ_POOL: usize = 8;
/// Page cache of each pooled reader, KiB. Every commit empties a WAL reader's cache, so a
/// big one mostly holds pages that are stale by the next read; the OS caches the file anyway.
const READER_CACHE_KIB: usize = 256;

/// Entries the writer keeps in each of its caches before starting them afresh.
const WRITER_CACHE: usize = 1 << 20;

/// Runs on the writer thread inside the open transaction; returns what to do once the commit
/// is known.
type Job = Box<dyn FnOnce(&mut Writer) -> Completion + Send>;
/// Called with the commit's outcome (`None` = committed and fsync'd).
type Completion = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Schema versions, applied in order and recorded in `PRAGMA user_version`. Append new
/// migrations; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
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
];

/// How the embedded store commits and when it starts its WAL over; the server takes both from
/// its configuration (`Config::max_commit_batch`, `Config::wal_restart_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct SqliteOptions {
    /// Most writes committed in one transaction (one fsync); at least one.
    pub max_commit_batch: usize,
    /// WAL frames (bytes) since the WAL last started over past which the checkpointer holds
    /// the writer for a moment and starts it over.
    pub wal_restart_bytes: u64,
}

/// What the embedded store counts, for `/metrics`. The server passes the ones it registered;
/// [`SqliteMetrics::default`] makes unregistered ones, for tools and tests that read none.
#[derive(Clone)]
pub struct SqliteMetrics {
    /// Writes per commit (per fsync).
    pub commit_batch_size: Histogram,
    /// WAL restarts by the checkpointer.
    pub wal_restarts: IntCounter,
}

impl Default for SqliteMetrics {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new("commit_batch_size", "writes per commit");
        SqliteMetrics {
            commit_batch_size: Histogram::with_opts(opts).expect("a valid static metric"),
            wal_restarts: IntCounter::new("wal_restarts", "WAL restarts")
                .expect("a valid static metric"),
        }
    }
}

/// The embedded SQLite message store.
pub struct SqliteStore {
    jobs: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: ReadPool,
    stop_checkpoints: Arc<std::sync::atomic::AtomicBool>,
    /// `<data dir>/confab.lock`, locked while the store is open (see [`lock_data_dir`]).
    lock: Mutex<Option<std::fs::File>>,
}

/// Locks `<dir>/confab.lock` for this process, or says who holds it. The writer keeps stream
/// heads and conversation `seq`s in memory, so two processes writing one database would hand
/// out the same positions: one process at a time owns an embedded store. The lock is the
/// kernel's (`flock`), so a killed process leaves nothing to clean up. SQLite's own locks
/// still let tools such as `sqlite3 .backup` read the database while it is held.
fn lock_data_dir(dir: &Path) -> StoreResult<std::fs::File> {
    let path = dir.join("confab.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "{} is in use by another process (a running `confab serve`?): one process at a \
             time owns an embedded store",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.to_string())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

fn to_i64(v: u64) -> i64 {
    v as i64
}

fn id_col(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Id> {
    Ok(Id(row.get::<_, i64>(i)? as u64))
}

impl SqliteStore {
    /// Opens (creating if needed) `confab.db` in `dir`, applies migrations and starts the writer
    /// and the checkpointer, tuned by `options` and counting in `metrics`.
    pub fn open(dir: &Path, options: SqliteOptions, metrics: SqliteMetrics) -> StoreResult<Self> {
        let SqliteOptions {
            max_commit_batch,
            wal_restart_bytes,
        } = options;
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let lock = lock_data_dir(dir)?;
        let path = dir.join("confab.db");
        let mut conn = Connection::open(&path)
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
        migrate(&mut conn)?;
        // rusqlite keeps 16 prepared statements per connection by default; the writer uses
        // more than that, and a statement evicted from the cache is parsed again on next use.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);

        let checkpoint_conn = Connection::open(&path).map_err(internal)?;
        let stop_checkpoints = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = stop_checkpoints.clone();
        let gate = Arc::new(WalGate::default());
        let writer_gate = gate.clone();
        std::thread::Builder::new()
            .name("confab-store-checkpoint".into())
            .spawn(move || {
                checkpointer(
                    checkpoint_conn,
                    stop,
                    gate,
                    wal_restart_bytes,
                    metrics.wal_restarts,
                )
            })
            .map_err(|e| StoreError::Internal(format!("cannot start checkpoint thread: {e}")))?;
        let max_batch = max_commit_batch.max(1);
        let batch_sizes = metrics.commit_batch_size;
        let (tx, rx) = mpsc::channel::<Job>(WRITE_QUEUE.max(max_batch));
        let writer = std::thread::Builder::new()
            .name("confab-store-writer".into())
            .spawn(move || writer_loop(Writer::new(conn), rx, max_batch, batch_sizes, &writer_gate))
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            jobs: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: ReadPool::new(path),
            stop_checkpoints,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Runs `f` in its own savepoint in the writer's next transaction; resolves after the
    /// commit is fsync'd.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        self.write_raw(move |w| in_savepoint(&w.conn, f)).await
    }

    /// Runs `f` on the writer in its next transaction, without a savepoint of its own: `f`
    /// either fails before its first change or sets [`Writer::poisoned`].
    async fn write_raw<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> StoreResult<T> + Send + 'static,
    {
        let sender = self
            .jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |w| {
            let result = f(w);
            Box::new(move |commit_error| {
                let _ = tx.send(match commit_error {
                    None => result,
                    Some(e) => Err(e),
                });
            })
        });
        sender
            .send(job)
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    /// Runs `f` on a pooled read-only connection off the async threads.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        if self
            .jobs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            return Err(StoreError::Unavailable("store is closed".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.readers.submit(Box::new(move |conn| {
            let _ = tx.send(conn.and_then(f));
        }))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("store reader stopped".into()))?
    }
}

/// A read job: runs on a reader thread with its connection (or the error opening it).
type ReadJob = Box<dyn FnOnce(StoreResult<&Connection>) + Send>;

/// Up to [`READ_POOL`] reader threads, each owning one read-only connection for its life,
/// started as reads queue up and taking jobs from one queue.
///
/// Dedicated threads rather than the runtime's blocking pool: that pool starts a new thread
/// whenever none is idle at that instant, so a burst of logins churned through dozens of
/// threads (each with its own allocator heap and stack), and every read had to find a
/// pooled connection under a lock.
struct ReadPool {
    path: PathBuf,
    queue: Mutex<Option<std::sync::mpsc::Sender<ReadJob>>>,
    jobs: Arc<Mutex<std::sync::mpsc::Receiver<ReadJob>>>,
    /// Reader threads running.
    threads: Arc<std::sync::atomic::AtomicUsize>,
    /// Reader threads waiting for a job.
    idle: Arc<std::sync::atomic::AtomicUsize>,
}

impl ReadPool {
    fn new(path: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        ReadPool {
            path,
            queue: Mutex::new(Some(tx)),
            jobs: Arc::new(Mutex::new(rx)),
            threads: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            idle: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    fn submit(&self, job: ReadJob) -> StoreResult<()> {
        use std::sync::atomic::Ordering;
        let closed = || StoreError::Unavailable("store is closed".into());
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or_else(closed)?
            .send(job)
            .map_err(|_| closed())?;
        // One more thread if none is waiting; a thread that fails to start leaves the job to
        // the running ones (the first always starts, or the store could not have opened).
        if self.idle.load(Ordering::Acquire) == 0
            && self
                .threads
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < READ_POOL).then_some(n + 1)
                })
                .is_ok()
        {
            let (jobs, idle, path) = (self.jobs.clone(), self.idle.clone(), self.path.clone());
            let running = Running(self.threads.clone());
            let started = std::thread::Builder::new()
                .name("confab-store-read".into())
                .spawn(move || {
                    let _running = running;
                    reader_loop(&path, &jobs, &idle)
                });
            if let Err(e) = started {
                // The closure, and the `Running` in it, were dropped: the count is back.
                tracing::warn!(error = %e, "cannot start a store reader thread");
            }
        }
        Ok(())
    }

    /// Stops taking reads; the threads finish the queued ones and exit.
    fn close(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Counts a reader thread as running until it ends, however it ends (a read that panics
/// takes its thread down; the next read starts another).
struct Running(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn reader_loop(
    path: &Path,
    jobs: &Mutex<std::sync::mpsc::Receiver<ReadJob>>,
    idle: &std::sync::atomic::AtomicUsize,
) {
    use std::sync::atomic::Ordering;
    let mut conn: Option<Connection> = None;
    loop {
        idle.fetch_add(1, Ordering::AcqRel);
        // One thread waits in `recv` while holding the lock, the others wait for the lock.
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        idle.fetch_sub(1, Ordering::AcqRel);
        let Ok(job) = job else { return };
        if conn.is_none() {
            match open_reader(path) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    job(Err(e));
                    continue;
                }
            }
        }
        job(Ok(conn.as_ref().expect("opened above")));
    }
}

/// Copies committed WAL frames into the database file in the background, so that commits
/// (and the `sent` acks waiting on them) never pay for a checkpoint. PASSIVE checkpoints do
/// not block the writer; they catch up whenever readers allow.
fn checkpointer(
    conn: Connection,
    stop: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<WalGate>,
    wal_restart_bytes: u64,
    restarts: IntCounter,
) {
    // A RESTART waits for the busy writer's lock: SQLite's own handler sleeps up to 25 ms
    // between tries and loses every gap between two batches.
    let _ = conn.busy_handler(Some(busy_retry));
    let _ = conn.pragma_update(None, "synchronous", "FULL");
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap_or(4096);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        // The row is (busy, frames in the WAL since it last started over, frames copied back).
        let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        let frames = match passive {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                continue;
            }
        };
        // A busy writer keeps appending to the WAL even when every frame has been copied
        // back (it starts the WAL over only at a commit that finds no frame left to copy, which
        // sustained load never leaves it), so the WAL would grow without end. Past a bound of
        // frames since it last started over, one RESTART checkpoint briefly holds the writer
        // back and the WAL starts over. (Deciding by the file's length, which never shrinks,
        // made every checkpoint a RESTART once the file had grown past the bound once: each
        // stalled the writer for 3-33 ms, the tail of the send latency.)
        if frames * page_size > wal_restart_bytes as i64 {
            gate.restart_with_writer_held(|| {
                match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
                    Ok(0) => restarts.inc(),
                    Ok(_) => tracing::debug!("WAL restart waited too long; trying again"),
                    Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                }
            });
        }
    }
}

/// How the checkpointer gets the writer to hold still for a WAL restart.
///
/// A RESTART checkpoint needs the write lock, which a busy writer holds almost all the time and
/// SQLite hands to nobody in particular: left to retry, the checkpointer lost the race between
/// two batches for seconds while the WAL grew by hundreds of MB. So it asks; the writer, between
/// two batches and with every caller answered, says it is waiting and waits until the restart
/// is done (or [`WAL_GATE_WAIT`] has passed).
#[derive(Default)]
struct WalGate {
    /// Whether the writer is waiting at the gate.
    writer_waiting: Mutex<bool>,
    changed: std::sync::Condvar,
    /// A restart is wanted. Changed only under `writer_waiting`'s lock; the writer reads it
    /// after every batch without the lock.
    wanted: std::sync::atomic::AtomicBool,
}

/// The longest either side waits for the other at the gate.
const WAL_GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl WalGate {
    /// Checkpointer: runs `restart` while the writer waits between batches.
    fn restart_with_writer_held(&self, restart: impl FnOnce()) {
        use std::sync::atomic::Ordering;
        let waiting = self
            .writer_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.wanted.store(true, Ordering::Release);
        let (waiting, _) = self
            .changed
            .wait_timeout_while(waiting, WAL_GATE_WAIT, |waiting| !*waiting)
            .unwrap_or_else(|e| e.into_inner());
        if *waiting {
            restart();
        }
        self.wanted.store(false, Ordering::Release);
        drop(waiting);
        self.changed.notify_all();
    }

    /// Writer, between batches: waits while a restart is wanted.
    fn hold_if_wanted(&self) {
        use std::sync::atomic::Ordering;
        if !self.wanted.load(Ordering::Acquire) {
            return;
        }
        let mut waiting = self
            .writer_waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *waiting = true;
        self.changed.notify_all();
        let (mut waiting, _) = self
            .changed
            .wait_timeout_while(waiting, WAL_GATE_WAIT, |_| {
                self.wanted.load(Ordering::Acquire)
            })
            .unwrap_or_else(|e| e.into_inner());
        *waiting = false;
    }
}

/// How long a connection (the writer, the checkpointer, a reader) waits for a lock another holds.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Pause between their tries for a busy lock.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_micros(100);

/// The writer's and the checkpointer's busy handler: retry every [`BUSY_RETRY`] until
/// [`BUSY_TIMEOUT`].
fn busy_retry(tries: i32) -> bool {
    if BUSY_RETRY * tries.max(0) as u32 >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

fn open_reader(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open reader: {e}")))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(internal)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "cache_size", -(READER_CACHE_KIB as i64))
        .map_err(internal)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(internal)? as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Internal(format!(
            "database schema version {version} is newer than this confab ({}); upgrade confab",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(internal)?;
        tx.execute_batch(sql).map_err(internal)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    // Cached statements: this runs for every write, so the SQL is parsed once, not per job.
    let run = |sql: &str| {
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map_err(internal)
    };
    run("SAVEPOINT job")?;
    let result = f(conn);
    if result.is_err() {
        run("ROLLBACK TO job")?;
    }
    run("RELEASE job")?;
    result
}

/// The writer thread's connection and what it remembers between jobs.
struct Writer {
    conn: Connection,
    /// Highest stream position per user, including writes in the open transaction.
    heads: HashMap<i64, u64>,
    /// Highest `seq` per conversation, including writes in the open transaction.
    seqs: HashMap<String, u64>,
    /// Who has blocked anyone: most users block nobody, and a message to them skips the
    /// blocks lookup.
    blockers: Blockers,
    /// Set by a job that failed after changing something it cannot undo alone (it ran without
    /// a savepoint): the whole transaction is rolled back and every job in it fails, which is
    /// safe because nobody has been answered yet, and senders retry idempotently.
    poisoned: bool,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Writer {
            conn,
            heads: HashMap::new(),
            seqs: HashMap::new(),
            blockers: Blockers::Unloaded,
            poisoned: false,
        }
    }

    /// After a rollback the caches may hold values that were never committed.
    fn forget(&mut self) {
        self.heads.clear();
        self.seqs.clear();
        self.blockers = Blockers::Unloaded;
        self.poisoned = false;
    }

    /// Whether `user` may have blocked someone (`false` only if they certainly have not).
    fn may_block(&mut self, user: Id) -> StoreResult<bool> {
        if let Blockers::Unloaded = self.blockers {
            let owners: Vec<i64> = self
                .conn
                .prepare_cached("SELECT DISTINCT owner FROM blocks LIMIT ?1")
                .and_then(|mut s| {
                    s.query_map(params![(WRITER_CACHE + 1) as i64], |r| r.get(0))?
                        .collect()
                })
                .map_err(internal)?;
            self.blockers = if owners.len() > WRITER_CACHE {
                Blockers::TooMany
            } else {
                Blockers::Known(owners.into_iter().collect())
            };
        }
        Ok(match &self.blockers {
            Blockers::Known(owners) => owners.contains(&to_i64(user.0)),
            Blockers::Unloaded | Blockers::TooMany => true,
        })
    }

    /// Called before `owner`'s block is written: the set may hold more than is committed
    /// (a rolled-back or removed block costs a lookup), never less.
    fn note_blocker(&mut self, owner: Id) {
        if let Blockers::Known(owners) = &mut self.blockers {
            owners.insert(to_i64(owner.0));
            if owners.len() > WRITER_CACHE {
                self.blockers = Blockers::TooMany;
            }
        }
    }

    /// The user's stream head, or `None` if there is no such user.
    fn head(&mut self, user: Id) -> StoreResult<Option<u64>> {
        let key = to_i64(user.0);
        if let Some(head) = self.heads.get(&key) {
            return Ok(Some(*head));
        }
        let row: (Option<i64>, Option<i64>) = self
            .conn
            .prepare_cached(
                "SELECT (SELECT 1 FROM users WHERE id = ?1),
                        (SELECT max(pos) FROM stream WHERE user_id = ?1)",
            )
            .and_then(|mut s| s.query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(internal)?;
        if row.0.is_none() {
            return Ok(None);
        }
        let head = row.1.unwrap_or(0) as u64;
        self.heads.insert(key, head);
        Ok(Some(head))
    }

    /// The conversation's last `seq`, or `None` if it has no message yet (and maybe no row).
    fn last_seq(&mut self, conversation: &str) -> StoreResult<Option<u64>> {
        if let Some(seq) = self.seqs.get(conversation) {
            return Ok(Some(*seq));
        }
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(seq) FROM messages WHERE conversation = ?1")
            .and_then(|mut s| s.query_row(params![conversation], |r| r.get(0)))
            .map_err(internal)?;
        Ok(last.map(|seq| {
            self.seqs.insert(conversation.to_owned(), seq as u64);
            seq as u64
        }))
    }

    /// Keeps the caches bounded; called between transactions, when they hold only
    /// committed values and can be rebuilt from the tables.
    fn trim(&mut self) {
        if self.heads.len() > WRITER_CACHE {
            self.heads.clear();
        }
        if self.seqs.len() > WRITER_CACHE {
            self.seqs.clear();
        }
    }
}

/// The writer's knowledge of who blocks anyone.
enum Blockers {
    /// Not read yet (or forgotten after a rollback).
    Unloaded,
    /// Every user with a block, and maybe some without.
    Known(std::collections::HashSet<i64>),
    /// More than [`WRITER_CACHE`] users: every message looks its block up.
    TooMany,
}

fn writer_loop(
    mut w: Writer,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    batch_sizes: Histogram,
    gate: &WalGate,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut completions = Vec::with_capacity(max_batch);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        batch_sizes.observe(batch.len() as f64);
        let error = match w.conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) => Some(StoreError::Unavailable(format!("cannot begin: {e}"))),
            Ok(()) => {
                for job in batch.drain(..) {
                    completions.push(job(&mut w));
                }
                let outcome = if w.poisoned {
                    Err("a write failed halfway".to_owned())
                } else {
                    w.conn.execute_batch("COMMIT").map_err(|e| e.to_string())
                };
                match outcome {
                    Ok(()) => None,
                    Err(e) => {
                        let _ = w.conn.execute_batch("ROLLBACK");
                        w.forget();
                        Some(StoreError::Unavailable(format!("commit failed: {e}")))
                    }
                }
            }
        };
        if let Some(e) = &error {
            tracing::error!(error = %e, "store commit failed; batch rejected");
            // Jobs that never ran are answered too, so no caller waits forever.
            for _ in batch.drain(..) {}
        }
        for done in completions.drain(..) {
            done(error.clone());
        }
        w.trim();
        gate.hold_if_wanted();
    }
    // Every sender is gone: all accepted writes are committed. Fold the WAL into the main
    // file so the next start does not replay it.
    if let Err(e) = w.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %e, "final WAL checkpoint failed");
    }
    if let Err((_, e)) = w.conn.close() {
        tracing::warn!(error = %e, "closing the store failed");
    }
}

fn user_exists(conn: &Connection, user: Id) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .and_then(|mut s| s.exists(params![to_i64(user.0)]))
        .map_err(internal)
}

fn has_contact(conn: &Connection, owner: Id, contact: Id) -> StoreResult<bool> {
    conn.prepare_cached("SELECT 1 FROM contacts WHERE owner = ?1 AND contact = ?2")
        .and_then(|mut s| s.exists(params![to_i64(owner.0), to_i64(contact.0)]))
        .map_err(internal)
}

fn set_cursor_in(conn: &Connection, device: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>> {
    let row: Option<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT d.user_id, d.cursor,
                    coalesce((SELECT max(pos) FROM stream WHERE user_id = d.user_id), 0)
             FROM devices d WHERE d.id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![to_i64(device.0)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let Some((user, old, head)) = row else {
        return Ok(Vec::new());
    };
    let new = to_i64(pos).min(head);
    if new <= old {
        return Ok(Vec::new());
    }
    conn.prepare_cached("UPDATE devices SET cursor = ?2 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![to_i64(device.0), new]))
        .map_err(internal)?;
    // The highest received seq per conversation in the newly acknowledged range.
    let received: Vec<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT m.conversation, m.sender, max(m.seq) FROM stream s
             JOIN messages m ON m.id = s.message_id
             WHERE s.user_id = ?1 AND s.pos > ?2 AND s.pos <= ?3 AND m.recipient = ?1
             GROUP BY m.conversation, m.sender",
        )
        .and_then(|mut s| {
            s.query_map(params![user, old, new], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    let mut advanced = Vec::new();
    let mut bump = conn
        .prepare_cached(
            "UPDATE conversations SET
                delivered_lo = CASE WHEN user_lo = ?3 THEN max(delivered_lo, ?2) ELSE delivered_lo END,
                delivered_hi = CASE WHEN user_hi = ?3 THEN max(delivered_hi, ?2) ELSE delivered_hi END
             WHERE id = ?1 AND ((user_lo = ?3 AND delivered_lo < ?2)
                             OR (user_hi = ?3 AND delivered_hi < ?2))",
        )
        .map_err(internal)?;
    for (conversation, sender, seq) in received {
        if bump
            .execute(params![conversation, seq, user])
            .map_err(internal)?
            > 0
        {
            advanced.push(DeliveredAdvance {
                conversation,
                peer: Id(sender as u64),
                seq: seq as u64,
            });
        }
    }
    Ok(advanced)
}

fn message_from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Message> {
    Ok(Message {
        id: id_col(row, at)?,
        conversation: row.get(at + 1)?,
        seq: row.get::<_, i64>(at + 2)? as u64,
        from: id_col(row, at + 3)?,
        to: id_col(row, at + 4)?,
        body: row.get(at + 5)?,
        ts: row.get(at + 6)?,
    })
}

const MESSAGE_COLUMNS: &str = "m.id, m.conversation, m.seq, m.sender, m.recipient, m.body, m.ts";

/// The message `sender` already sent with `client_id`, if any.
fn find_sent(conn: &Connection, sender: Id, client_id: &str) -> StoreResult<Option<Message>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.sender = ?1 AND m.client_id = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![to_i64(sender.0), client_id], |r| {
            message_from_row(r, 0)
        })
        .optional()
    })
    .map_err(internal)
}

/// Appends one message without a savepoint: everything that can refuse it (a block, an
/// unknown user) is checked before the first change, and a failure after it poisons the
/// batch. A repeated `client_id` is found by the message insert itself (its unique key), so
/// the common case of a new message pays for no lookup.
fn append_in(w: &mut Writer, m: NewMessage) -> StoreResult<Appended> {
    if w.may_block(m.to)? {
        let blocked = w
            .conn
            .prepare_cached("SELECT 1 FROM blocks WHERE owner = ?1 AND blocked = ?2")
            .and_then(|mut s| s.exists(params![to_i64(m.to.0), to_i64(m.from.0)]))
            .map_err(internal)?;
        if blocked {
            // A retry of a message stored before the block still gets its original answer.
            if let Some(message) = find_sent(&w.conn, m.from, &m.client_id)? {
                return Ok(Appended::duplicate(message));
            }
            return Err(StoreError::Forbidden(
                "the recipient does not accept your messages".into(),
            ));
        }
    }
    let recipient_pos = w
        .head(m.to)?
        .ok_or_else(|| StoreError::NotFound(format!("no user {}", m.to)))?
        + 1;
    let sender_pos = w
        .head(m.from)?
        .ok_or_else(|| StoreError::NotFound(format!("no user {}", m.from)))?
        + 1;
    let conversation = conversation_id(m.from, m.to);
    let (lo, hi) = if m.from <= m.to {
        (m.from, m.to)
    } else {
        (m.to, m.from)
    };
    let seq = match w.last_seq(&conversation)? {
        Some(last) => last + 1,
        None => {
            // A repeated `client_id` is caught by the insert below, but that comes after this
            // conversation's row is made, a change it could not undo: so the first message of
            // a conversation checks for one first.
            if let Some(message) = find_sent(&w.conn, m.from, &m.client_id)? {
                return Ok(Appended::duplicate(message));
            }
            // The first change; from here on a failure poisons the batch.
            let created = w
                .conn
                .prepare_cached(
                    "INSERT INTO conversations (id, user_lo, user_hi) VALUES (?1, ?2, ?3)
                     ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![conversation, to_i64(lo.0), to_i64(hi.0)]));
            if let Err(e) = created {
                w.poisoned = true;
                return Err(internal(e));
            }
            1
        }
    };
    // `OR FAIL` rather than the default `ABORT`: SQLite then keeps no statement journal (a
    // copy of each page the statement changes, so that a half-done statement can be undone).
    // Neither insert needs one: a row's constraints are all checked before it is written, so
    // a refused message changes nothing, and a failure between the two stream rows poisons
    // the batch anyway.
    let inserted = w
        .conn
        .prepare_cached(
            "INSERT OR FAIL INTO messages
                 (id, conversation, seq, sender, recipient, client_id, body, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                to_i64(m.id.0),
                conversation,
                to_i64(seq),
                to_i64(m.from.0),
                to_i64(m.to.0),
                m.client_id,
                m.body,
                m.ts
            ])
        });
    if let Err(e) = inserted {
        // The unique key refused the row before anything was written: the batch is clean.
        if is_unique_violation(&e)
            && let Some(message) = find_sent(&w.conn, m.from, &m.client_id)?
        {
            return Ok(Appended::duplicate(message));
        }
        w.poisoned = true;
        return Err(internal(e));
    }
    let streamed = w
        .conn
        .prepare_cached(
            "INSERT OR FAIL INTO stream (user_id, pos, message_id)
             VALUES (?1, ?2, ?5), (?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                to_i64(m.to.0),
                to_i64(recipient_pos),
                to_i64(m.from.0),
                to_i64(sender_pos),
                to_i64(m.id.0)
            ])
        });
    if let Err(e) = streamed {
        w.poisoned = true;
        return Err(internal(e));
    }
    w.heads.insert(to_i64(m.to.0), recipient_pos);
    w.heads.insert(to_i64(m.from.0), sender_pos);
    w.seqs.insert(conversation.clone(), seq);
    Ok(Appended {
        message: Arc::new(Message {
            id: m.id,
            conversation,
            seq,
            from: m.from,
            to: m.to,
            body: m.body,
            ts: m.ts,
        }),
        sender_pos,
        recipient_pos,
        duplicate: false,
    })
}

fn friends_in(conn: &Connection, user: Id) -> StoreResult<Vec<Id>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.contact FROM contacts c
             JOIN contacts r ON r.owner = c.contact AND r.contact = c.owner
             WHERE c.owner = ?1
               AND NOT EXISTS (SELECT 1 FROM blocks b
                               WHERE (b.owner = ?1 AND b.blocked = c.contact)
                                  OR (b.owner = c.contact AND b.blocked = ?1))",
        )
        .map_err(internal)?;
    let rows = stmt
        .query_map(params![to_i64(user.0)], |r| id_col(r, 0))
        .map_err(internal)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(internal)
}

fn stream_head_in(conn: &Connection, user: Id) -> StoreResult<u64> {
    conn.prepare_cached("SELECT max(pos) FROM stream WHERE user_id = ?1")
        .and_then(|mut s| s.query_row(params![to_i64(user.0)], |r| r.get::<_, Option<i64>>(0)))
        .map(|v| v.unwrap_or(0) as u64)
        .map_err(internal)
}

/// Stream entries after `after`. Every bound `LIMIT` in this file is written `LIMIT +?n`: SQLite
/// plans a plain `LIMIT ?n` with the bound value, so each new binding re-prepares the statement
/// (parsing and planning it again: a quarter of the server's CPU during a burst of logins); as
/// an expression it is planned once.
fn stream_after_in(
    conn: &Connection,
    user: Id,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<StreamEntry>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT s.pos, {MESSAGE_COLUMNS} FROM stream s
             JOIN messages m ON m.id = s.message_id
             WHERE s.user_id = ?1 AND s.pos > ?2 ORDER BY s.pos LIMIT +?3"
        ))
        .map_err(internal)?;
    let rows = stmt
        .query_map(params![to_i64(user.0), to_i64(after), limit as i64], |r| {
            Ok(StreamEntry {
                pos: r.get::<_, i64>(0)? as u64,
                message: message_from_row(r, 1)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(internal)
}

#[async_trait]
impl Accounts for SqliteStore {
    async fn create_user(
        &self,
        id: Id,
        username: &str,
        password_hash: &str,
        now: i64,
    ) -> StoreResult<User> {
        let (username, hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO users (id, username, username_key, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    to_i64(id.0),
                    username,
                    username.to_ascii_lowercase(),
                    hash,
                    now
                ])
            })
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("username {username:?} is taken"))
                } else {
                    internal(e)
                }
            })?;
            Ok(User {
                user_id: id,
                username,
            })
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let key = username.to_ascii_lowercase();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username, password_hash FROM users WHERE username_key = ?1",
            )
            .and_then(|mut s| {
                s.query_row(params![key], |r| {
                    Ok(UserRecord {
                        id: id_col(r, 0)?,
                        username: r.get(1)?,
                        password_hash: r.get(2)?,
                    })
                })
                .optional()
            })
            .map_err(internal)
        })
        .await
    }

    async fn seed_accounts(&self, accounts: Vec<SeedAccount>) -> StoreResult<()> {
        self.write(move |conn| {
            let mut user = conn
                .prepare_cached(
                    "INSERT INTO users (id, username, username_key, password_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(internal)?;
            let mut device = conn
                .prepare_cached(
                    "INSERT INTO devices (id, user_id, name, token_hash, created_at)
                     VALUES (?1, ?2, 'seed', ?3, ?4)",
                )
                .map_err(internal)?;
            for a in &accounts {
                user.execute(params![
                    to_i64(a.user_id.0),
                    a.username,
                    a.username.to_ascii_lowercase(),
                    a.password_hash,
                    a.now
                ])
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("username {:?} is taken", a.username))
                    } else {
                        internal(e)
                    }
                })?;
                device
                    .execute(params![
                        to_i64(a.device_id.0),
                        to_i64(a.user_id.0),
                        &a.token_hash[..],
                        a.now
                    ])
                    .map_err(internal)?;
            }
            Ok(())
        })
        .await
    }

    async fn create_device(&self, d: NewDevice) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO devices (id, user_id, name, token_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    to_i64(d.id.0),
                    to_i64(d.user_id.0),
                    d.name,
                    &d.token_hash[..],
                    d.now
                ])
            })
            .map_err(internal)?;
            Ok(())
        })
        .await
    }

    async fn device_by_token(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id, id, cursor FROM devices
                 WHERE token_hash = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row(params![&token_hash[..]], |r| {
                    Ok(DeviceSession {
                        user_id: id_col(r, 0)?,
                        device_id: id_col(r, 1)?,
                        cursor: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
            })
            .map_err(internal)
        })
        .await
    }

    async fn revoke_device(&self, device_id: Id, now: i64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![to_i64(device_id.0), now]))
            .map_err(internal)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Contacts for SqliteStore {
    async fn add_contact(&self, owner: Id, contact: Id, now: i64) -> StoreResult<bool> {
        self.write(move |conn| {
            if !user_exists(conn, contact)? {
                return Err(StoreError::NotFound(format!("no user {contact}")));
            }
            conn.prepare_cached(
                "INSERT INTO contacts (owner, contact, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![to_i64(owner.0), to_i64(contact.0), now]))
            .map_err(internal)?;
            has_contact(conn, contact, owner)
        })
        .await
    }

    async fn remove_contact(&self, owner: Id, contact: Id) -> StoreResult<bool> {
        self.write(move |conn| {
            let removed = conn
                .prepare_cached("DELETE FROM contacts WHERE owner = ?1 AND contact = ?2")
                .and_then(|mut s| s.execute(params![to_i64(owner.0), to_i64(contact.0)]))
                .map_err(internal)?;
            Ok(removed > 0 && has_contact(conn, contact, owner)?)
        })
        .await
    }

    async fn contacts(&self, owner: Id) -> StoreResult<Vec<ContactEntry>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT c.contact, u.username,
                            EXISTS (SELECT 1 FROM contacts r
                                    WHERE r.owner = c.contact AND r.contact = c.owner),
                            EXISTS (SELECT 1 FROM blocks b
                                    WHERE (b.owner = c.owner AND b.blocked = c.contact)
                                       OR (b.owner = c.contact AND b.blocked = c.owner)),
                            u.last_seen
                     FROM contacts c JOIN users u ON u.id = c.contact
                     WHERE c.owner = ?1 ORDER BY u.username_key",
                )
                .map_err(internal)?;
            let rows = stmt
                .query_map(params![to_i64(owner.0)], |r| {
                    Ok(ContactEntry {
                        user_id: id_col(r, 0)?,
                        username: r.get(1)?,
                        mutual: r.get(2)?,
                        blocked: r.get(3)?,
                        last_seen: r.get(4)?,
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(internal)
        })
        .await
    }

    async fn friends(&self, user: Id) -> StoreResult<Vec<Id>> {
        self.read(move |conn| friends_in(conn, user)).await
    }

    async fn set_block(&self, owner: Id, other: Id, blocked: bool, now: i64) -> StoreResult<()> {
        self.write_raw(move |w| {
            if blocked {
                w.note_blocker(owner);
            }
            in_savepoint(&w.conn, |conn| {
                if !user_exists(conn, other)? {
                    return Err(StoreError::NotFound(format!("no user {other}")));
                }
                let sql = if blocked {
                    "INSERT INTO blocks (owner, blocked, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING"
                } else {
                    "DELETE FROM blocks WHERE owner = ?1 AND blocked = ?2 AND ?3 = ?3"
                };
                conn.prepare_cached(sql)
                    .and_then(|mut s| s.execute(params![to_i64(owner.0), to_i64(other.0), now]))
                    .map_err(internal)?;
                Ok(())
            })
        })
        .await
    }

    async fn blocked_between(&self, a: Id, b: Id) -> StoreResult<bool> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM blocks WHERE (owner = ?1 AND blocked = ?2)
                                         OR (owner = ?2 AND blocked = ?1)",
            )
            .and_then(|mut s| s.exists(params![to_i64(a.0), to_i64(b.0)]))
            .map_err(internal)
        })
        .await
    }

    async fn set_last_seen(&self, user: Id, ts: i64) -> StoreResult<()> {
        self.write(move |conn| {
            conn.prepare_cached("UPDATE users SET last_seen = max(last_seen, ?2) WHERE id = ?1")
                .and_then(|mut s| s.execute(params![to_i64(user.0), ts]))
                .map_err(internal)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Streams for SqliteStore {
    async fn append(&self, message: NewMessage) -> StoreResult<Appended> {
        self.write_raw(move |w| append_in(w, message)).await
    }

    async fn stream_head(&self, user: Id) -> StoreResult<u64> {
        self.read(move |conn| stream_head_in(conn, user)).await
    }

    async fn stream_after(
        &self,
        user: Id,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEntry>> {
        self.read(move |conn| stream_after_in(conn, user, after, limit))
            .await
    }

    async fn set_cursor(&self, device_id: Id, pos: u64) -> StoreResult<Vec<DeliveredAdvance>> {
        self.write(move |conn| set_cursor_in(conn, device_id, pos))
            .await
    }
}

#[async_trait]
impl Conversations for SqliteStore {
    async fn conversations(&self, user: Id) -> StoreResult<Vec<ConversationSummary>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT c.id, c.user_lo, c.user_hi, m.seq,
                            c.read_lo, c.read_hi, c.delivered_lo, c.delivered_hi,
                            {MESSAGE_COLUMNS}
                     FROM conversations c
                     JOIN messages m ON m.conversation = c.id AND m.seq =
                         (SELECT max(seq) FROM messages WHERE conversation = c.id)
                     WHERE c.user_lo = ?1 OR c.user_hi = ?1
                     ORDER BY m.id DESC"
                ))
                .map_err(internal)?;
            let rows = stmt
                .query_map(params![to_i64(user.0)], |r| {
                    let lo = id_col(r, 1)?;
                    let hi = id_col(r, 2)?;
                    let col = |i| r.get::<_, i64>(i).map(|v| v as u64);
                    let (read_lo, read_hi, del_lo, del_hi) = (col(4)?, col(5)?, col(6)?, col(7)?);
                    let i_am_lo = lo == user;
                    Ok(ConversationSummary {
                        conversation: r.get(0)?,
                        peer: if i_am_lo { hi } else { lo },
                        last_seq: col(3)?,
                        last_message: Some(message_from_row(r, 8)?),
                        read_seq: if i_am_lo { read_lo } else { read_hi },
                        peer_read_seq: if i_am_lo { read_hi } else { read_lo },
                        peer_delivered_seq: if i_am_lo { del_hi } else { del_lo },
                    })
                })
                .map_err(internal)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(internal)
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
        self.read(move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM conversations WHERE id = ?1")
                .and_then(|mut s| s.exists(params![conversation]))
                .map_err(internal)?;
            if !exists {
                return Ok(None);
            }
            let before = before.map_or(i64::MAX, to_i64);
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m
                     WHERE m.conversation = ?1 AND m.seq < ?2 ORDER BY m.seq DESC LIMIT +?3"
                ))
                .map_err(internal)?;
            let mut messages = stmt
                .query_map(params![conversation, before, limit as i64 + 1], |r| {
                    message_from_row(r, 0)
                })
                .map_err(internal)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?;
            let more = messages.len() > limit;
            messages.truncate(limit);
            messages.reverse();
            Ok(Some(MessagePage { messages, more }))
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
            let last: Option<i64> = conn
                .prepare_cached("SELECT max(seq) FROM messages WHERE conversation = ?1")
                .and_then(|mut s| s.query_row(params![conversation], |r| r.get(0)))
                .map_err(internal)?;
            let last = last.ok_or_else(not_found)? as u64;
            let seq = seq.min(last);
            let sql = if is_lo {
                "UPDATE conversations SET read_lo = ?2 WHERE id = ?1 AND read_lo < ?2"
            } else {
                "UPDATE conversations SET read_hi = ?2 WHERE id = ?1 AND read_hi < ?2"
            };
            let changed = conn
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![conversation, to_i64(seq)]))
                .map_err(internal)?;
            Ok((changed > 0).then_some(ReadAdvance { peer, seq }))
        })
        .await
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn login_state(&self, user: Id, after: u64, limit: usize) -> StoreResult<LoginState> {
        self.read(move |conn| {
            Ok(LoginState {
                head: stream_head_in(conn, user)?,
                friends: friends_in(conn, user)?,
                entries: stream_after_in(conn, user, after, limit)?,
            })
        })
        .await
    }

    async fn check(&self) -> StoreResult<()> {
        self.write(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(internal))
            .await
    }

    async fn close(&self) {
        self.stop_checkpoints
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let sender = self.jobs.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(sender);
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = writer {
            // The writer finishes the jobs already queued, checkpoints and exits.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.readers.close();
        // The writer is gone: another process (or a store reopened here) may write now.
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catch-up query runs from its cached, prepared form, not re-prepared per binding.
    #[test]
    fn catch_up_statement_is_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("confab.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        migrate(&mut conn).unwrap();
        let reader = open_reader(&path).unwrap();
        for after in 0..5 {
            stream_after_in(&reader, Id(1), after, 10 + after as usize).unwrap();
        }
        let sql = format!(
            "SELECT s.pos, {MESSAGE_COLUMNS} FROM stream s
             JOIN messages m ON m.id = s.message_id
             WHERE s.user_id = ?1 AND s.pos > ?2 ORDER BY s.pos LIMIT +?3"
        );
        let stmt = reader.prepare_cached(&sql).unwrap();
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::Run),
            5,
            "the same statement ran"
        );
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    /// However many reads wait at once, at most `READ_POOL` reader threads (and connections)
    /// serve them, and every read is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_share_a_bounded_pool_of_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let store = Arc::new(store);
        let names = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let reads = (0..READ_POOL * 4).map(|_| {
            let (store, names) = (store.clone(), names.clone());
            tokio::spawn(async move {
                store
                    .read(move |conn| {
                        names.lock().unwrap().insert(std::thread::current().id());
                        // Long enough that the reads pile up behind the pool.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                            .map_err(internal)
                    })
                    .await
            })
        });
        for read in futures::future::join_all(reads).await {
            assert_eq!(read.unwrap().unwrap(), 1);
        }
        let threads = names.lock().unwrap().len();
        assert!(threads <= READ_POOL, "{threads} reader threads");
        assert!(threads > 1, "reads ran on one thread only");
        let started = store
            .readers
            .threads
            .load(std::sync::atomic::Ordering::Acquire);
        assert!(
            threads <= started && started <= READ_POOL,
            "{started} started"
        );
        // A read that panics takes its thread down and answers `Unavailable`; reads go on.
        for _ in 0..READ_POOL + 1 {
            let failed = store
                .read(|_| -> StoreResult<()> { panic!("a read that panics") })
                .await;
            assert!(
                matches!(failed, Err(StoreError::Unavailable(_))),
                "{failed:?}"
            );
        }
        let after = store
            .read(|conn| {
                conn.query_row("SELECT 2", [], |r| r.get::<_, i64>(0))
                    .map_err(internal)
            })
            .await;
        assert_eq!(after.unwrap(), 2);
        store.close().await;
        let refused = store.read(|_| Ok(())).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))));
    }

    /// The checkpointer's restart runs only while the writer waits at the gate, and the writer
    /// goes on once it is done; a writer that is not asked does not wait.
    #[test]
    fn the_wal_gate_holds_the_writer_for_the_restart_only() {
        let gate = Arc::new(WalGate::default());
        let t = std::time::Instant::now();
        gate.hold_if_wanted();
        assert!(t.elapsed() < std::time::Duration::from_millis(100));

        let writer_inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (gate, inside) = (gate.clone(), writer_inside.clone());
            std::thread::spawn(move || {
                // The writer between batches, until the checkpointer has asked once.
                while !gate.wanted.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                inside.store(true, std::sync::atomic::Ordering::SeqCst);
                gate.hold_if_wanted();
                inside.store(false, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut ran_while_held = false;
        gate.restart_with_writer_held(|| {
            ran_while_held = writer_inside.load(std::sync::atomic::Ordering::SeqCst);
            // The writer stays put while the restart runs.
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(writer_inside.load(std::sync::atomic::Ordering::SeqCst));
        });
        writer.join().unwrap();
        assert!(ran_while_held);
        assert!(!gate.wanted.load(std::sync::atomic::Ordering::Acquire));
    }

    /// A write that fails after its first change (here: a stream position taken behind the
    /// writer's back, so the stream insert fails after the message row is in) rolls the whole
    /// batch back, forgets the writer's cached heads and seqs, and the sender's retry with the
    /// same `client_id` is stored once, at the positions the store really has free.
    #[tokio::test]
    async fn a_write_failing_halfway_rolls_back_and_its_retry_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path()).await;
        let (a, b) = (Id(1), Id(2));
        store.create_user(a, "a", "x", 0).await.unwrap();
        store.create_user(b, "b", "x", 0).await.unwrap();
        let send = |id: u64, client_id: &str| NewMessage {
            id: Id(id),
            from: a,
            to: b,
            client_id: client_id.into(),
            body: "hi".into(),
            ts: 0,
        };
        let first = store.append(send(10, "c1")).await.unwrap();
        assert_eq!((first.message.seq, first.recipient_pos), (1, 1));

        // Another connection takes b's next position behind the writer's cached head, so the
        // next append's stream insert fails after its message row is written.
        {
            let other = Connection::open(dir.path().join("confab.db")).unwrap();
            other
                .execute(
                    "INSERT INTO stream (user_id, pos, message_id) VALUES (?1, 2, 10)",
                    params![to_i64(b.0)],
                )
                .unwrap();
        }
        let failed = store.append(send(11, "c2")).await;
        assert!(
            matches!(failed, Err(StoreError::Unavailable(_))),
            "{failed:?}"
        );
        let rows: i64 = store
            .read(|conn| {
                conn.query_row("SELECT count(*) FROM messages WHERE id = 11", [], |r| {
                    r.get(0)
                })
                .map_err(internal)
            })
            .await
            .unwrap();
        assert_eq!(rows, 0, "the message row was rolled back with the batch");

        // The retry reads heads and seqs from the store again.
        let retry = store.append(send(12, "c2")).await.unwrap();
        assert!(!retry.duplicate);
        assert_eq!((retry.message.seq, retry.recipient_pos), (2, 3));
        let again = store.append(send(13, "c2")).await.unwrap();
        assert!(again.duplicate, "the retry was stored once");
        assert_eq!(again.message.id, Id(12));
        store.close().await;
    }

    /// Under writes that never let up, every checkpoint finds new frames to copy, so SQLite
    /// alone never starts the WAL over: the checkpointer does, each time it holds more than
    /// the bound (here 256 KiB, a few hundred messages).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_past_its_bound() {
        const BOUND: u64 = 256 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let restarts = counter();
        let store = Arc::new(open_store_with(dir.path(), 64, BOUND, restarts.clone()).await);
        const USERS: u64 = 64;
        for u in 1..=USERS {
            store
                .create_user(Id(u), &format!("u{u}"), "x", 0)
                .await
                .unwrap();
        }
        // Eight senders back to back for 1.5 s: several checkpoints, each after more than
        // the bound was written.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        let senders = (0..8u64).map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while std::time::Instant::now() < until {
                    let from = 1 + (t * 8 + i) % USERS;
                    let to = 1 + (from + 1 + i % 7) % USERS;
                    let id = (t << 40) | i;
                    let m = NewMessage {
                        id: Id(id),
                        from: Id(from),
                        to: Id(to),
                        client_id: format!("{t}-{i}"),
                        body: "x".repeat(500),
                        ts: 0,
                    };
                    store.append(m).await.unwrap();
                    i += 1;
                }
                i
            })
        });
        let sent: u64 = futures::future::join_all(senders)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .sum();
        assert!(
            restarts.get() >= 1,
            "no restart after {sent} messages (WAL file {} bytes)",
            std::fs::metadata(dir.path().join("confab.db-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
        );
        store.close().await;
    }

    /// While a store is open its data dir is locked: another open fails and says why, and
    /// closing the store frees the dir.
    #[tokio::test]
    async fn an_open_store_holds_its_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_store(dir.path()).await;
        let options = SqliteOptions {
            max_commit_batch: 16,
            wal_restart_bytes: 1 << 20,
        };
        let second = SqliteStore::open(dir.path(), options, SqliteMetrics::default());
        match second {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("in use by another process"), "{m}")
            }
            Err(e) => panic!("unexpected error: {e:?}"),
            Ok(_) => panic!("a second store opened a locked data dir"),
        }
        first.close().await;
        let again = open_store(dir.path()).await;
        again.close().await;
    }

    /// Opens a store in `dir` with the default WAL bound.
    async fn open_store(dir: &Path) -> SqliteStore {
        let wal = crate::config::Config::default().wal_restart_bytes;
        open_store_with(dir, 16, wal, counter()).await
    }

    /// Opens a store in `dir` off the async threads (opening migrates, which blocks).
    async fn open_store_with(
        dir: &Path,
        max_commit_batch: usize,
        wal_restart_bytes: u64,
        restarts: IntCounter,
    ) -> SqliteStore {
        let path = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            let options = SqliteOptions {
                max_commit_batch,
                wal_restart_bytes,
            };
            let metrics = SqliteMetrics {
                wal_restarts: restarts,
                ..SqliteMetrics::default()
            };
            SqliteStore::open(&path, options, metrics)
        })
        .await
        .unwrap()
        .unwrap()
    }

    fn counter() -> IntCounter {
        IntCounter::new("c", "c").unwrap()
    }

    /// A store written by schema 2 (heads and last seqs kept in columns) carries on from the
    /// values its rows imply once migrated.
    #[tokio::test]
    async fn migration_3_continues_heads_and_seqs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("confab.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.execute_batch(MIGRATIONS[1]).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute_batch(
                "INSERT INTO users (id, username, username_key, password_hash, created_at,
                                    stream_head)
                 VALUES (1, 'a', 'a', 'x', 0, 2), (2, 'b', 'b', 'x', 0, 2);
                 INSERT INTO conversations (id, user_lo, user_hi, last_seq, last_ts)
                 VALUES ('1-2', 1, 2, 2, 20);
                 INSERT INTO messages (id, conversation, seq, sender, recipient, client_id,
                                       body, ts)
                 VALUES (10, '1-2', 1, 1, 2, 'c1', 'one', 10),
                        (11, '1-2', 2, 2, 1, 'c2', 'two', 20);
                 INSERT INTO stream (user_id, pos, message_id)
                 VALUES (1, 1, 10), (2, 1, 10), (1, 2, 11), (2, 2, 11);",
            )
            .unwrap();
        }
        let store = open_store(dir.path()).await;
        let conversation = conversation_id(Id(1), Id(2));
        assert_eq!(
            conversation, "1-2",
            "the fixture names the conversation right"
        );
        assert_eq!(store.stream_head(Id(1)).await.unwrap(), 2);
        let appended = store
            .append(NewMessage {
                id: Id(12),
                from: Id(1),
                to: Id(2),
                client_id: "c3".into(),
                body: "three".into(),
                ts: 30,
            })
            .await
            .unwrap();
        assert_eq!(appended.message.seq, 3);
        assert_eq!((appended.sender_pos, appended.recipient_pos), (3, 3));
        let list = store.conversations(Id(2)).await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].last_seq, 3);
        assert_eq!(list[0].last_message.as_ref().unwrap().body, "three");
        store.close().await;
    }
}
