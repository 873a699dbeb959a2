//! In-process presence for a single node.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use confab_protocol::{Id, Presence, PresenceStatus};

use super::{PresenceError, PresenceService};

#[derive(Default)]
struct Entry {
    sockets: HashSet<u64>,
    last_seen: i64,
}

/// Presence kept in this process's memory.
#[derive(Default)]
pub struct MemoryPresence {
    users: Mutex<HashMap<Id, Entry>>,
}

impl MemoryPresence {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl PresenceService for MemoryPresence {
    async fn connected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let entry = users.entry(user).or_default();
        let first = entry.sockets.is_empty();
        entry.sockets.insert(socket);
        entry.last_seen = now;
        Ok(first)
    }

    async fn disconnected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get_mut(&user) else {
            return Ok(false);
        };
        let removed = entry.sockets.remove(&socket);
        if removed {
            entry.last_seen = now;
        }
        Ok(removed && entry.sockets.is_empty())
    }

    async fn status(&self, ids: &[Id]) -> Result<Vec<Presence>, PresenceError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(ids
            .iter()
            .map(|id| match users.get(id) {
                Some(e) if !e.sockets.is_empty() => Presence {
                    status: PresenceStatus::Online,
                    last_seen: e.last_seen,
                },
                Some(e) => Presence {
                    status: PresenceStatus::Offline,
                    last_seen: e.last_seen,
                },
                None => Presence {
                    status: PresenceStatus::Offline,
                    last_seen: 0,
                },
            })
            .collect())
    }

    async fn check(&self) -> Result<(), PresenceError> {
        Ok(())
    }
}
