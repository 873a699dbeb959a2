//! In-process presence for a single node.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use confab_protocol::{Id, Presence, PresenceStatus};

use super::{PresenceError, PresenceService};

#[derive(Default)]
struct Entry {
    /// Each socket's device.
    sockets: HashMap<u64, Id>,
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
    async fn connected(
        &self,
        user: Id,
        device: Id,
        socket: u64,
        now: i64,
    ) -> Result<bool, PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let entry = users.entry(user).or_default();
        let first = entry.sockets.is_empty();
        entry.sockets.insert(socket, device);
        entry.last_seen = now;
        Ok(first)
    }

    async fn disconnected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = users.get_mut(&user) else {
            return Ok(false);
        };
        let removed = entry.sockets.remove(&socket).is_some();
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

    async fn online_devices(&self, ids: &[Id]) -> Result<HashSet<Id>, PresenceError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(ids
            .iter()
            .filter_map(|id| users.get(id))
            .flat_map(|e| e.sockets.values().copied())
            .collect())
    }

    async fn check(&self) -> Result<(), PresenceError> {
        Ok(())
    }
}
