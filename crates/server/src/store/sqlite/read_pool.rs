//! The reader threads: reads run off the async threads, on a small pool of read-only
//! connections that WAL lets proceed while the writer commits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::connections::open_reader;
use crate::store::{StoreError, StoreResult};

/// Read connections kept open for reuse.
pub(super) const READ_POOL: usize = 8;

/// A read job: runs on a reader thread with its connection (or the error opening it).
type ReadJob = Box<dyn FnOnce(StoreResult<&Connection>) + Send>;

/// Up to [`READ_POOL`] reader threads, each owning one read-only connection for its life,
/// started as reads queue up and taking jobs from one queue.
///
/// Dedicated threads rather than the runtime's blocking pool: that pool starts a new thread
/// whenever none is idle at that instant, so a burst of logins churned through dozens of
/// threads (each with its own allocator heap and stack), and every read had to find a
/// pooled connection under a lock.
pub(super) struct ReadPool {
    path: PathBuf,
    queue: Mutex<Option<std::sync::mpsc::Sender<ReadJob>>>,
    jobs: Arc<Mutex<std::sync::mpsc::Receiver<ReadJob>>>,
    /// Reader threads running.
    pub(super) threads: Arc<std::sync::atomic::AtomicUsize>,
    /// Reader threads waiting for a job.
    idle: Arc<std::sync::atomic::AtomicUsize>,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        ReadPool {
            path,
            queue: Mutex::new(Some(tx)),
            jobs: Arc::new(Mutex::new(rx)),
            threads: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            idle: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    pub(super) fn submit(&self, job: ReadJob) -> StoreResult<()> {
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
    pub(super) fn close(&self) {
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
