//! What the app receives: the events of the stream and the confirmation of a send.

use confab_protocol::{ErrorCode, Id, Message, PresenceStatus, ReceiptKind};

/// The server's confirmation that a message is durably stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub client_id: String,
    pub id: Id,
    pub conversation: String,
    pub seq: u64,
    pub ts: i64,
}

/// Something that happened on the connection, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A message in one of the user's conversations (incoming, or sent by any of its devices).
    /// Never delivered twice.
    Message { message: Message, cursor: String },
    /// Catch-up is complete; what follows is live.
    Synced { cursor: String },
    /// A peer's (or this user's other device's) delivered or read mark moved.
    Receipt {
        conversation: String,
        user_id: Id,
        kind: ReceiptKind,
        seq: u64,
    },
    /// A friend went online or offline.
    Presence {
        user_id: Id,
        status: PresenceStatus,
        last_seen: i64,
    },
    /// A peer is typing.
    Typing { from: Id, conversation: String },
    /// A new connection reached `welcome` after a drop; catch-up follows.
    Reconnected,
    /// The connection dropped; the client is reconnecting.
    Disconnected { reason: String },
    /// An `error` frame not tied to a pending send, or the `unauthorized` that ends the client.
    Error {
        code: ErrorCode,
        message: String,
        reference: Option<String>,
    },
}
