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

mod accounts;
mod append;
mod checkpoint;
mod connections;
mod contacts;
mod conversations;
mod groups;
mod lock;
mod push;
mod read_pool;
mod rows;
mod schema;
mod streams;
#[cfg(test)]
mod tests;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use confab_protocol::Id;
use prometheus::{Histogram, IntCounter};
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use self::connections::open_writer;
use self::contacts::friends_in;
use self::lock::lock_data_dir;
use self::read_pool::ReadPool;
use self::rows::internal;
use self::schema::migrate;
use self::streams::{stream_after_in, stream_head_in};
use self::writer::{Job, Writer, in_savepoint};
use super::{LoginState, MessageStore, StoreError, StoreResult};
use crate::config::SqliteConfig;

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
    stop_checkpoints: Arc<AtomicBool>,
    /// `<data dir>/confab.lock`, locked while the store is open (see [`lock_data_dir`]).
    lock: Mutex<Option<std::fs::File>>,
    /// The data directory, whose disk's free space [`MessageStore::check`] reads.
    dir: PathBuf,
    /// See [`SqliteConfig::min_free_disk_bytes`].
    min_free_disk_bytes: u64,
}

impl SqliteStore {
    /// Opens (creating if needed) `confab.db` in `dir`, applies migrations and starts the writer
    /// and the checkpointer, tuned by `options` and counting in `metrics`.
    pub fn open(dir: &Path, options: SqliteConfig, metrics: SqliteMetrics) -> StoreResult<Self> {
        let SqliteConfig {
            max_commit_batch,
            wal_restart_bytes,
            min_free_disk_bytes,
        } = options;
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let lock = lock_data_dir(dir)?;
        let path = dir.join("confab.db");
        let mut conn = open_writer(&path)?;
        migrate(&mut conn)?;
        // One process owns the data dir (the lock above): a claim still leased was made by a
        // process that died, so the push server takes it up at once, not when it would end.
        push::release_leases(&conn)?;
        let (stop_checkpoints, gate) =
            checkpoint::start(&path, wal_restart_bytes, metrics.wal_restarts)?;
        let (tx, writer) = writer::start(conn, max_commit_batch, metrics.commit_batch_size, gate)?;
        Ok(SqliteStore {
            jobs: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: ReadPool::new(path),
            stop_checkpoints,
            lock: Mutex::new(Some(lock)),
            dir: dir.to_owned(),
            min_free_disk_bytes,
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
        // A real write through the group commit: answered once it is fsync'd, so a full or
        // failing disk shows here as it does for messages.
        let now = crate::time::now_ms();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO readiness (id, checked_at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                [now],
            )
            .map(|_| ())
            .map_err(internal)
        })
        .await?;
        let free = free_disk_bytes(&self.dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot read the free space of {}: {e}",
                self.dir.display()
            ))
        })?;
        if free < self.min_free_disk_bytes {
            return Err(StoreError::Unavailable(format!(
                "the data directory's disk has {} KiB free, under the {} KiB floor",
                free / 1024,
                self.min_free_disk_bytes / 1024
            )));
        }
        Ok(())
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

/// Bytes an unprivileged process may still write on the disk holding `dir`.
fn free_disk_bytes(dir: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}
