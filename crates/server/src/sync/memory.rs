//! The in-process sync queue of a single node: publishing hands the event straight to the
//! local gateway, in the publisher's task, so there is no extra hop and nothing to lose.

use std::sync::RwLock;

use async_trait::async_trait;

use super::{EventHandler, SyncError, SyncEvent, SyncQueue};

/// In-process queue: one node, no broker.
#[derive(Default)]
pub struct MemoryQueue {
    handler: RwLock<Option<EventHandler>>,
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SyncQueue for MemoryQueue {
    async fn subscribe(&self, handler: EventHandler) -> Result<(), SyncError> {
        *self.handler.write().unwrap_or_else(|e| e.into_inner()) = Some(handler);
        Ok(())
    }

    async fn publish(&self, event: SyncEvent) -> Result<(), SyncError> {
        let handler = self
            .handler
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(handler) = handler {
            handler(event);
        }
        Ok(())
    }

    async fn check(&self) -> Result<(), SyncError> {
        Ok(())
    }
}
