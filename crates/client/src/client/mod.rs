//! The high-level client: one background task owns the socket and reconnects it; the app
//! talks to that task through a cheap [`Client`] handle.
//!
//! Delivery model: the server delivers at least once, so the task drops repeats (by message
//! id and by per-conversation `seq`) before the app sees them, and resumes every reconnect
//! from the last cursor it queued for the app, so catch-up starts where the app's view ends.

mod backoff;
mod channel;
mod config;
mod dedupe;
mod driver;
mod event;
mod incoming;
mod pending;
mod reconnect;

use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};

use confab_protocol::Id;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::Instrument;

use crate::api::ws_url;
use crate::connection::{Connection, Welcome};
use crate::error::{Error, ErrorKind};

pub use channel::SendTo;

/// A `client_id` no other send of this client has: 128 random bits.
fn fresh_client_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
use channel::{Command, Item};
pub use config::ClientConfig;
use driver::Driver;
pub use event::{Event, Sent};

/// Handle to a connected client. Clones share one connection, one event stream and one
/// background task; the task stops when [`Client::close`] is called or every handle is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    // Unbounded on purpose: a bounded queue would stall the socket task while the app is
    // busy, and with it the `sent` confirmations the app may be waiting for. The cost is
    // memory if the app never reads events.
    events: Mutex<mpsc::UnboundedReceiver<Item>>,
    cursor: StdMutex<Option<String>>,
    auto_ack: bool,
    welcome: Welcome,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("user_id", &self.shared.welcome.user_id)
            .field("device_id", &self.shared.welcome.device_id)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and waits for `welcome`. This first connect must succeed (e.g. an
    /// `unauthorized` token is an error here); later drops are reconnected in the background.
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        let url = ws_url(&config.base_url);
        let (conn, welcome) = Connection::connect_within(
            &url,
            &config.token,
            config.cursor.as_deref(),
            config.connect_timeout,
        )
        .await?;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            commands: cmd_tx,
            events: Mutex::new(event_rx),
            cursor: StdMutex::new(config.cursor.clone()),
            auto_ack: config.auto_ack,
            welcome,
        });
        let span = tracing::info_span!(
            "confab_client",
            user_id = %welcome.user_id,
            device_id = %welcome.device_id
        );
        let driver = Driver::new(config, url, cmd_rx, event_tx);
        tokio::spawn(driver.run(conn).instrument(span));
        Ok(Client { shared })
    }

    /// The user this client is logged in as.
    pub fn user_id(&self) -> Id {
        self.shared.welcome.user_id
    }

    /// This session's device.
    pub fn device_id(&self) -> Id {
        self.shared.welcome.device_id
    }

    /// Sends `body` to user `to` with a fresh random `client_id`; see [`Client::send_with_id`].
    pub async fn send(&self, to: Id, body: &str) -> Result<Sent, Error> {
        self.send_with_id(to, &fresh_client_id(), body).await
    }

    /// Sends `body` to user `to` and waits for `sent`. The same `client_id` is resent after a
    /// reconnect, after `send_timeout` without an answer, and after `rate_limited` or
    /// `unavailable` (with backoff), until `sent` arrives; any other error code fails at once.
    /// The server stores a repeated `client_id` only once. Dropping the future gives up.
    pub async fn send_with_id(&self, to: Id, client_id: &str, body: &str) -> Result<Sent, Error> {
        self.send_to(SendTo::User(to), client_id, body).await
    }

    /// Sends `body` into a conversation by its id (a group's, or a 1:1's) with a fresh random
    /// `client_id`; retried as [`Client::send_with_id`] is.
    pub async fn send_in(&self, conversation: &str, body: &str) -> Result<Sent, Error> {
        let to = SendTo::Conversation(conversation.to_owned());
        self.send_to(to, &fresh_client_id(), body).await
    }

    /// Sends `body` to `to` with this `client_id` and waits for `sent` (see
    /// [`Client::send_with_id`] for the retries).
    pub async fn send_to(&self, to: SendTo, client_id: &str, body: &str) -> Result<Sent, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Send {
            to,
            client_id: client_id.to_owned(),
            body: body.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| Error::new(ErrorKind::Closed))?
    }

    /// The next event; `None` once the client is closed (or stopped for good by `unauthorized`)
    /// and every earlier event was taken.
    ///
    /// With `auto_ack`, taking a `Message` or `Synced` event acks its cursor: acks are
    /// coalesced to at most one per 50 ms, and the one after `Synced` goes out at once.
    pub async fn next_event(&self) -> Option<Event> {
        let mut events = self.shared.events.lock().await;
        loop {
            let item = events.recv().await?;
            if let Some(cursor) = item.cursor {
                *lock(&self.shared.cursor) = Some(cursor.clone());
                if self.shared.auto_ack {
                    // The task may already be gone; then there is nobody left to ack to.
                    let _ = self.command(Command::Ack {
                        cursor,
                        urgent: item.urgent_ack,
                    });
                }
            }
            if let Some(event) = item.event {
                return Some(event);
            }
        }
    }

    /// Acks `cursor` (for `auto_ack: false`): sent at once, or right after the next reconnect.
    pub async fn ack(&self, cursor: &str) -> Result<(), Error> {
        self.command(Command::Ack {
            cursor: cursor.to_owned(),
            urgent: true,
        })
    }

    /// Marks `conversation` read up to `seq`. Sent at once, or right after the next reconnect.
    pub async fn read(&self, conversation: &str, seq: u64) -> Result<(), Error> {
        self.command(Command::Read {
            conversation: conversation.to_owned(),
            seq,
        })
    }

    /// Tells user `to` that this user is typing. Ephemeral: dropped while disconnected.
    pub async fn typing(&self, to: Id) -> Result<(), Error> {
        self.command(Command::Typing {
            to: SendTo::User(to),
        })
    }

    /// Tells the other members of a conversation (by its id) that the user is typing.
    pub async fn typing_in(&self, conversation: &str) -> Result<(), Error> {
        self.command(Command::Typing {
            to: SendTo::Conversation(conversation.to_owned()),
        })
    }

    /// The cursor of the last event the app took from [`Client::next_event`]: persist it and
    /// pass it as [`ClientConfig::cursor`] to resume there later.
    pub fn cursor(&self) -> Option<String> {
        lock(&self.shared.cursor).clone()
    }

    /// Closes the client for every handle: pending acks are flushed, the socket is closed
    /// cleanly, pending sends fail with [`ErrorKind::Closed`], and once the app has taken the
    /// events already received, `next_event` returns `None`.
    pub async fn close(self) {
        let (done, finished) = oneshot::channel();
        if self.command(Command::Close { done }).is_ok() {
            let _ = finished.await;
        }
    }

    fn command(&self, command: Command) -> Result<(), Error> {
        self.shared
            .commands
            .send(command)
            .map_err(|_| Error::new(ErrorKind::Closed))
    }
}

fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks is a plain value that a panic cannot leave half-written.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
