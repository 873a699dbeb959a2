//! confab's Rust SDK.
//!
//! - [`Api`]: the HTTP half (accounts, sessions, history, contacts).
//! - [`Connection`]: one raw WebSocket session, no retries, for tests and benchmarks.
//! - [`Client`]: connect, catch up, send with retry, dedupe, reconnect with backoff.
//!
//! The wire types come from `confab-protocol` and are re-exported here, so the SDK never
//! restates the wire format.

mod api;
mod client;
mod connection;
mod error;

pub use api::Api;
pub use client::{Client, ClientConfig, Event, SendTo, Sent};
pub use connection::{
    CONNECT_TIMEOUT, ConnectOptions, Connection, ConnectionReceiver, ConnectionSender,
    DEFAULT_READ_BUFFER, Welcome,
};
pub use error::{BoxError, Error, ErrorKind};

pub use confab_protocol as protocol;
pub use confab_protocol::{
    ClientFrame, Contact, Contacts, ConversationSummary, Conversations, ErrorCode, Id, Message,
    MessagePage, Presence, PresenceStatus, ReceiptKind, ServerFrame, Session, SessionInfo,
    Sessions, User,
};
