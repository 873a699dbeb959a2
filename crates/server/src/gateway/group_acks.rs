//! A socket's acknowledgements of group messages, written by a task of its own and
//! coalesced: while one write is in flight, later acks only raise the marks waiting, so a
//! client acking every message of a busy group costs the store one write per group per
//! round trip, not one per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use confab_protocol::Id;
use tokio::sync::Notify;

use crate::chat::Chat;
use crate::store::DeviceSession;

/// What the socket and its writer task share.
#[derive(Default)]
struct Shared {
    /// The highest `seq` acknowledged per group and not yet handed to the store.
    pending: Mutex<HashMap<Id, u64>>,
    wake: Notify,
    closed: AtomicBool,
}

/// The writer of one socket's group marks; started at its first group ack.
pub(super) struct GroupAckWriter {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl GroupAckWriter {
    pub(super) fn start(chat: Arc<Chat>, session: DeviceSession) -> Self {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(write_marks(chat, session, shared.clone()));
        GroupAckWriter { shared, task }
    }

    /// Records an ack of `group` up to `seq` for the next write.
    pub(super) fn ack(&self, group: Id, seq: u64) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mark = pending.entry(group).or_insert(seq);
        *mark = (*mark).max(seq);
        drop(pending);
        self.shared.wake.notify_one();
    }

    /// Writes what is pending, then stops.
    pub(super) async fn finish(self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let _ = self.task.await;
    }
}

async fn write_marks(chat: Arc<Chat>, session: DeviceSession, shared: Arc<Shared>) {
    loop {
        shared.wake.notified().await;
        let batch = std::mem::take(&mut *shared.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (group, seq) in batch {
            if let Err(e) = chat.record_group_ack(session, group, seq).await {
                tracing::warn!(error = %e, "storing a group mark failed");
            }
        }
        let done = shared.closed.load(Ordering::Acquire)
            && shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if done {
            return;
        }
    }
}
