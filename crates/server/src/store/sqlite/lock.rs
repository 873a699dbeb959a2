//! The data-dir lock: one process at a time owns an embedded store.

use std::path::Path;

use crate::store::{StoreError, StoreResult};

/// Locks `<dir>/confab.lock` for this process, or says who holds it. The writer keeps stream
/// heads and conversation `seq`s in memory, so two processes writing one database would hand
/// out the same positions: one process at a time owns an embedded store. The lock is the
/// kernel's (`flock`), so a killed process leaves nothing to clean up. SQLite's own locks
/// still let tools such as `sqlite3 .backup` read the database while it is held.
pub(super) fn lock_data_dir(dir: &Path) -> StoreResult<std::fs::File> {
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
