//! The checkpointer: copies the WAL back into the database file on a thread of its own, and
//! starts the WAL over once it has grown past its bound, so that commits pay for neither.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use rusqlite::Connection;

use super::connections::busy_retry;
use super::rows::internal;
use crate::store::{StoreError, StoreResult};

/// Starts the checkpointer on its own connection to `path`. Returns the flag that stops it
/// and the gate through which it asks the writer to hold still.
pub(super) fn start(
    path: &Path,
    wal_restart_bytes: u64,
    wal_restarts: IntCounter,
) -> StoreResult<(Arc<AtomicBool>, Arc<WalGate>)> {
    let conn = Connection::open(path).map_err(internal)?;
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(WalGate::default());
    let (thread_stop, thread_gate) = (stop.clone(), gate.clone());
    std::thread::Builder::new()
        .name("confab-store-checkpoint".into())
        .spawn(move || {
            checkpointer(
                conn,
                thread_stop,
                thread_gate,
                wal_restart_bytes,
                wal_restarts,
            )
        })
        .map_err(|e| StoreError::Internal(format!("cannot start checkpoint thread: {e}")))?;
    Ok((stop, gate))
}

/// Copies committed WAL frames into the database file in the background, so that commits
/// (and the `sent` acks waiting on them) never pay for a checkpoint. PASSIVE checkpoints do
/// not block the writer; they catch up whenever readers allow.
pub(super) fn checkpointer(
    mut conn: Connection,
    stop: Arc<AtomicBool>,
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
    // A bound past what SQL counts is never reached.
    let wal_restart_bytes = i64::try_from(wal_restart_bytes).unwrap_or(i64::MAX);
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
        if frames.saturating_mul(page_size) > wal_restart_bytes {
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
pub(super) struct WalGate {
    /// Whether the writer is waiting at the gate.
    writer_waiting: Mutex<bool>,
    changed: std::sync::Condvar,
    /// A restart is wanted. Changed only under `writer_waiting`'s lock; the writer reads it
    /// after every batch without the lock.
    pub(super) wanted: std::sync::atomic::AtomicBool,
}

/// The longest either side waits for the other at the gate.
const WAL_GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl WalGate {
    /// Checkpointer: runs `restart` while the writer waits between batches.
    pub(super) fn restart_with_writer_held(&self, restart: impl FnOnce()) {
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
    pub(super) fn hold_if_wanted(&self) {
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
