//! The message sync queue (design step 5): carries events from the node that stored them to
//! every node holding a socket of an addressed user.
//!
//! The queue is a fast path, not a source of truth: an event it loses is still in the message
//! store, and the device receives it at its next catch-up (or as soon as a later event reveals
//! the gap in its stream positions, see `gateway`). So delivery through the queue may be
//! at-most-once; what must hold is that an event published after a commit is never delivered
//! before that commit is visible to readers.

pub mod memory;
pub mod nats;

use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::{Id, Message, ServerFrame};

/// Something that happened which connected devices must hear about.
#[derive(Clone, Debug)]
pub enum SyncEvent {
    /// A stored message, with its position in each participant's stream.
    Message {
        message: Arc<Message>,
        positions: [(Id, u64); 2],
    },
    /// A message stored in a group (a text or a `system` one), for every device of each
    /// recipient: the members at its `seq`. Group messages have no stream position; a socket
    /// orders them by `seq` per group.
    GroupMessage {
        message: Arc<Message>,
        recipients: Arc<[Id]>,
    },
    /// A device's token was revoked: its open sockets must close (1008).
    DeviceRevoked { user: Id, device: Id },
    /// A frame that is not stored (presence, receipt, typing) for every socket of `to`,
    /// except those of `except_device`.
    Ephemeral {
        to: Vec<Id>,
        except_device: Option<Id>,
        frame: Arc<ServerFrame>,
    },
}

/// Why the queue failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync queue unavailable: {0}")]
    Unavailable(String),
}

/// Receives every event published anywhere in the cluster that concerns this node.
pub type EventHandler = Arc<dyn Fn(SyncEvent) + Send + Sync>;

/// A message sync queue between chat service nodes.
///
/// Guarantees: events published by one node for one user arrive in publish order (per user,
/// per publisher); delivery is at-most-once and may lose events when a node or the broker
/// fails (the store covers for that).
#[async_trait]
pub trait SyncQueue: Send + Sync + 'static {
    /// Starts delivering events to `handler`. Called once, before any publish.
    async fn subscribe(&self, handler: EventHandler) -> Result<(), SyncError>;
    /// Hands an event to every node that holds a socket of one of its users.
    async fn publish(&self, event: SyncEvent) -> Result<(), SyncError>;
    /// Succeeds while the queue is reachable (a round trip).
    async fn check(&self) -> Result<(), SyncError>;
    /// Cheap, local guess whether publishing works right now. A node refuses new sends
    /// while it is false, so a message is not stored where no other node would hear of it.
    fn available(&self) -> bool {
        true
    }
}
