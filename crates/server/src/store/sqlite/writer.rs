//! The writer thread and its group commit: the one writable connection takes every job waiting
//! into one transaction and one fsync, and remembers between jobs what the hot path would
//! otherwise read again for every message.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use confab_protocol::Id;
use prometheus::Histogram;
use rusqlite::{Connection, params};
use tokio::sync::mpsc;

use super::checkpoint::WalGate;
use super::rows::internal;
use crate::store::sql_integers::id_to_sql;
use crate::store::{StoreError, StoreResult};

/// Jobs waiting for the writer beyond which callers wait (backpressure instead of memory);
/// never fewer than one batch, or a batch could not fill up.
const WRITE_QUEUE: usize = 16 * 1024;

/// Entries the writer keeps in each of its caches before starting them afresh.
const WRITER_CACHE: usize = 1 << 20;
/// Groups whose members the writer keeps (each up to `max_group_members` ids: 4,096 groups of
/// 1,024 are 32 MiB at most).
const GROUPS_CACHED: usize = 4096;

/// Runs on the writer thread inside the open transaction; returns what to do once the commit
/// is known.
pub(super) type Job = Box<dyn FnOnce(&mut Writer) -> Completion + Send>;

/// Called with the commit's outcome (`None` = committed and fsync'd).
type Completion = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Starts the writer thread on `conn`, committing up to `max_batch` jobs at once (their count
/// observed in `batch_sizes`) and holding still at `gate` when the checkpointer asks. Returns
/// where to send jobs; dropping every sender stops the thread once the queued jobs are done.
pub(super) fn start(
    conn: Connection,
    max_batch: usize,
    batch_sizes: Histogram,
    gate: Arc<WalGate>,
) -> StoreResult<(mpsc::Sender<Job>, JoinHandle<()>)> {
    let max_batch = max_batch.max(1);
    let (tx, rx) = mpsc::channel::<Job>(WRITE_QUEUE.max(max_batch));
    let writer = std::thread::Builder::new()
        .name("confab-store-writer".into())
        .spawn(move || writer_loop(Writer::new(conn), rx, max_batch, batch_sizes, &gate))
        .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
    Ok((tx, writer))
}

/// Runs `f` in a savepoint of its own, rolled back if `f` fails: one failing job leaves the
/// rest of its batch standing.
pub(super) fn in_savepoint<T>(
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
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Highest stream position per user, including writes in the open transaction.
    pub(super) heads: HashMap<i64, u64>,
    /// Highest `seq` per conversation, including writes in the open transaction.
    pub(super) seqs: HashMap<String, u64>,
    /// Current members per group, including the open transaction's changes: a group's send
    /// reads them once, not once per message (a change forgets its group's entry).
    pub(super) members: HashMap<i64, Arc<[Id]>>,
    /// Who has blocked anyone: most users block nobody, and a message to them skips the
    /// blocks lookup.
    blockers: UserSet,
    /// Who has a push subscription: a message to anyone else writes no intent to notify,
    /// and most messages skip the lookup.
    push_users: UserSet,
    /// Set by a job that failed after changing something it cannot undo alone (it ran without
    /// a savepoint): the whole transaction is rolled back and every job in it fails, which is
    /// safe because nobody has been answered yet, and senders retry idempotently.
    pub(super) poisoned: bool,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Writer {
            conn,
            heads: HashMap::new(),
            seqs: HashMap::new(),
            members: HashMap::new(),
            blockers: UserSet::Unloaded,
            push_users: UserSet::Unloaded,
            poisoned: false,
        }
    }

    /// After a rollback the caches may hold values that were never committed.
    fn forget(&mut self) {
        self.heads.clear();
        self.seqs.clear();
        self.members.clear();
        self.blockers = UserSet::Unloaded;
        self.push_users = UserSet::Unloaded;
        self.poisoned = false;
    }

    /// Whether `user` may have blocked someone (`false` only if they certainly have not).
    pub(super) fn may_block(&mut self, user: Id) -> StoreResult<bool> {
        self.blockers.may_contain(
            &self.conn,
            "SELECT DISTINCT owner FROM blocks LIMIT ?1",
            user,
        )
    }

    /// Called before `owner`'s block is written: the set may hold more than is committed
    /// (a rolled-back or removed block costs a lookup), never less.
    pub(super) fn note_blocker(&mut self, owner: Id) {
        self.blockers.note(owner);
    }

    /// Whether `user` may have a push subscription (`false` only if they certainly have
    /// none). A message to a user who may costs a lookup of their devices at expansion.
    pub(super) fn may_push(&mut self, user: Id) -> StoreResult<bool> {
        self.push_users.may_contain(
            &self.conn,
            "SELECT DISTINCT user_id FROM push_subscriptions LIMIT ?1",
            user,
        )
    }

    /// Called before `user`'s subscription is written (as [`Writer::note_blocker`]).
    pub(super) fn note_push_user(&mut self, user: Id) {
        self.push_users.note(user);
    }

    /// The user's stream head, or `None` if there is no such user.
    pub(super) fn head(&mut self, user: Id) -> StoreResult<Option<u64>> {
        let key = id_to_sql(user);
        if let Some(head) = self.heads.get(&key) {
            return Ok(Some(*head));
        }
        let row: (Option<i64>, Option<u64>) = self
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
        let head = row.1.unwrap_or(0);
        self.heads.insert(key, head);
        Ok(Some(head))
    }

    /// The conversation's last `seq`, or `None` if it has no message yet (and maybe no row).
    pub(super) fn last_seq(&mut self, conversation: &str) -> StoreResult<Option<u64>> {
        if let Some(seq) = self.seqs.get(conversation) {
            return Ok(Some(*seq));
        }
        let last: Option<u64> = self
            .conn
            .prepare_cached("SELECT max(seq) FROM messages WHERE conversation = ?1")
            .and_then(|mut s| s.query_row(params![conversation], |r| r.get(0)))
            .map_err(internal)?;
        if let Some(seq) = last {
            self.seqs.insert(conversation.to_owned(), seq);
        }
        Ok(last)
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
        if self.members.len() > GROUPS_CACHED {
            self.members.clear();
        }
    }
}

/// The writer's knowledge of a set of users (who blocks anyone, who has a push
/// subscription): a superset of the committed one, or unknown.
enum UserSet {
    /// Not read yet (or forgotten after a rollback).
    Unloaded,
    /// Every user in the set, and maybe some no longer in it.
    Known(std::collections::HashSet<i64>),
    /// More than [`WRITER_CACHE`] users: every message looks its user up.
    TooMany,
}

impl UserSet {
    /// Whether `user` may be in the set; `load` (one `?1`, the limit) lists it.
    fn may_contain(&mut self, conn: &Connection, load: &str, user: Id) -> StoreResult<bool> {
        if let UserSet::Unloaded = self {
            let users: Vec<i64> = conn
                .prepare_cached(load)
                .and_then(|mut s| {
                    s.query_map(params![WRITER_CACHE + 1], |r| r.get(0))?
                        .collect()
                })
                .map_err(internal)?;
            *self = if users.len() > WRITER_CACHE {
                UserSet::TooMany
            } else {
                UserSet::Known(users.into_iter().collect())
            };
        }
        Ok(match self {
            UserSet::Known(users) => users.contains(&id_to_sql(user)),
            UserSet::Unloaded | UserSet::TooMany => true,
        })
    }

    fn note(&mut self, user: Id) {
        if let UserSet::Known(users) = self {
            users.insert(id_to_sql(user));
            if users.len() > WRITER_CACHE {
                *self = UserSet::TooMany;
            }
        }
    }
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
