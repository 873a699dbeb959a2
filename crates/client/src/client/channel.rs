//! What travels between the [`Client`](crate::Client) handles and the background task.

use confab_protocol::Id;
use tokio::sync::oneshot;

use super::event::{Event, Sent};
use crate::error::Error;

/// From a [`Client`](crate::Client) handle to the task.
/// Where a send or a typing notice goes: a user (the 1:1 conversation with them) or a
/// conversation by its id (a group's, or a 1:1's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendTo {
    User(Id),
    Conversation(String),
}

impl SendTo {
    /// The frame's `to` and `conversation` fields.
    pub(super) fn fields(self) -> (Option<Id>, Option<String>) {
        match self {
            SendTo::User(user) => (Some(user), None),
            SendTo::Conversation(c) => (None, Some(c)),
        }
    }
}

pub(super) enum Command {
    Send {
        to: SendTo,
        client_id: String,
        body: String,
        reply: oneshot::Sender<Result<Sent, Error>>,
    },
    Ack {
        cursor: String,
        urgent: bool,
    },
    Read {
        conversation: String,
        seq: u64,
    },
    Typing {
        to: SendTo,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// From the task to the app. A skipped duplicate is an item with a cursor and no event, so
/// the app's cursor (and ack) still moves past it, in order.
pub(super) struct Item {
    pub(super) event: Option<Event>,
    pub(super) cursor: Option<String>,
    pub(super) urgent_ack: bool,
}

impl Item {
    pub(super) fn event(event: Event) -> Item {
        Item {
            event: Some(event),
            cursor: None,
            urgent_ack: false,
        }
    }
}
