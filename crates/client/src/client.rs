//! The high-level client: one background task owns the socket and reconnects it; the app
//! talks to that task through a cheap [`Client`] handle.
//!
//! Delivery model: the server delivers at least once, so the task drops repeats (by message
//! id and by per-conversation `seq`) before the app sees them, and resumes every reconnect
//! from the last cursor it queued for the app, so catch-up starts where the app's view ends.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::Duration;

use confab_protocol::{
    ClientFrame, ErrorCode, Id, Message, PresenceStatus, ReceiptKind, ServerFrame,
};
use rand::RngExt;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use crate::api::ws_url;
use crate::connection::{Connection, Welcome};
use crate::error::{Error, ErrorKind};

/// How many recent message ids the dedupe remembers.
const RECENT_IDS: usize = 10_000;
/// Automatic acks are coalesced: at most one per this interval (plus one right after `synced`).
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// Settings for [`Client::connect`]. Build with [`ClientConfig::new`] and adjust fields.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's HTTP base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// A session token from [`crate::Api::login`].
    pub token: String,
    /// Where to resume the event stream; `None` resumes after this device's last ack.
    pub cursor: Option<String>,
    /// Ack each message once the app took it from [`Client::next_event`] (default `true`).
    pub auto_ack: bool,
    /// First reconnect delay, and the floor of every retry delay (default 100 ms).
    pub min_backoff: Duration,
    /// Ceiling of reconnect and retry delays (default 10 s).
    pub max_backoff: Duration,
    /// How long one send attempt waits for `sent` before resending (default 10 s).
    pub send_timeout: Duration,
    /// Limit for one connect attempt, upgrade to `welcome` (default 10 s).
    pub connect_timeout: Duration,
    /// Silence after which an application `ping` is sent (default 20 s).
    pub ping_interval: Duration,
    /// Silence after which the connection is taken for dead and replaced (default 60 s).
    pub idle_timeout: Duration,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never let it reach a log line.
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .field("cursor", &self.cursor)
            .field("auto_ack", &self.auto_ack)
            .field("min_backoff", &self.min_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("send_timeout", &self.send_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl ClientConfig {
    /// Defaults for the server at `base_url`, authenticating with `token`.
    pub fn new(base_url: &str, token: &str) -> Self {
        ClientConfig {
            base_url: base_url.to_owned(),
            token: token.to_owned(),
            cursor: None,
            auto_ack: true,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            send_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

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
        let client_id = format!("{:032x}", rand::random::<u128>());
        self.send_with_id(to, &client_id, body).await
    }

    /// Sends `body` to user `to` and waits for `sent`. The same `client_id` is resent after a
    /// reconnect, after `send_timeout` without an answer, and after `rate_limited` or
    /// `unavailable` (with backoff), until `sent` arrives; any other error code fails at once.
    /// The server stores a repeated `client_id` only once. Dropping the future gives up.
    pub async fn send_with_id(&self, to: Id, client_id: &str, body: &str) -> Result<Sent, Error> {
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
        self.command(Command::Typing { to })
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

/// From a [`Client`] handle to the task.
enum Command {
    Send {
        to: Id,
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
        to: Id,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// From the task to the app. A skipped duplicate is an item with a cursor and no event, so
/// the app's cursor (and ack) still moves past it, in order.
struct Item {
    event: Option<Event>,
    cursor: Option<String>,
    urgent_ack: bool,
}

impl Item {
    fn event(event: Event) -> Item {
        Item {
            event: Some(event),
            cursor: None,
            urgent_ack: false,
        }
    }
}

/// A send waiting for `sent`.
struct PendingSend {
    frame: ClientFrame,
    client_id: String,
    /// Everyone waiting: a second `send_with_id` of a pending `client_id` joins the first.
    waiters: Vec<oneshot::Sender<Result<Sent, Error>>>,
    /// When to (re)write the frame: now for a new send or after a reconnect, the attempt's
    /// timeout once written, the end of the backoff after `rate_limited`/`unavailable`.
    due: Instant,
    /// Written on the current socket and waiting for an answer.
    in_flight: bool,
    /// Retryable errors so far, for the backoff.
    retries: u32,
}

impl PendingSend {
    fn abandoned(&self) -> bool {
        self.waiters.iter().all(|w| w.is_closed())
    }

    fn finish(self, result: &Result<Sent, Error>) {
        for waiter in self.waiters {
            let copy = match result {
                Ok(sent) => Ok(sent.clone()),
                Err(e) => Err(e.kind_only()),
            };
            let _ = waiter.send(copy);
        }
    }
}

/// Pending sends in the order they were made, so a reconnect resends them in that order.
#[derive(Default)]
struct PendingSends {
    by_order: BTreeMap<u64, PendingSend>,
    by_client_id: HashMap<String, u64>,
    next_order: u64,
}

impl PendingSends {
    fn get_mut(&mut self, client_id: &str) -> Option<&mut PendingSend> {
        let order = self.by_client_id.get(client_id)?;
        self.by_order.get_mut(order)
    }

    fn insert(&mut self, send: PendingSend) {
        let order = self.next_order;
        self.next_order += 1;
        self.by_client_id.insert(send.client_id.clone(), order);
        self.by_order.insert(order, send);
    }

    fn remove(&mut self, client_id: &str) -> Option<PendingSend> {
        let order = self.by_client_id.remove(client_id)?;
        self.by_order.remove(&order)
    }

    fn remove_order(&mut self, order: u64) -> Option<PendingSend> {
        let send = self.by_order.remove(&order)?;
        self.by_client_id.remove(&send.client_id);
        Some(send)
    }

    fn drain(&mut self) -> impl Iterator<Item = PendingSend> {
        self.by_client_id.clear();
        std::mem::take(&mut self.by_order).into_values()
    }
}

/// Remembers what the app has seen so at-least-once delivery becomes exactly-once for it.
#[derive(Default)]
struct Dedupe {
    recent: HashSet<Id>,
    order: VecDeque<Id>,
    /// Per conversation, the highest `seq` delivered: the server delivers each conversation in
    /// `seq` order, so anything at or below it is a repeat even after its id was forgotten.
    high_seq: HashMap<String, u64>,
}

impl Dedupe {
    /// Records `message`; false if it was delivered before.
    fn first_time(&mut self, message: &Message) -> bool {
        let high = self.high_seq.get(&message.conversation).copied();
        if self.recent.contains(&message.id) || high.is_some_and(|h| message.seq <= h) {
            return false;
        }
        self.high_seq
            .insert(message.conversation.clone(), message.seq);
        self.recent.insert(message.id);
        self.order.push_back(message.id);
        let excess = self.order.len().saturating_sub(RECENT_IDS);
        for old in self.order.drain(..excess) {
            self.recent.remove(&old);
        }
        true
    }
}

/// Why a connection's serve loop ended.
enum Flow {
    /// The socket is gone; reconnect.
    Lost(String),
    /// Stop for good (close requested, every handle dropped, or unauthorized).
    Stop,
}

/// What woke the serve loop.
enum Wake {
    Frame(Result<Option<ServerFrame>, Error>),
    Command(Option<Command>),
    Timer,
}

/// Liveness bookkeeping for one socket.
struct Link {
    last_rx: Instant,
    last_ping: Instant,
}

/// The background task: owns the socket, the pending sends and the dedupe state.
struct Driver {
    config: ClientConfig,
    url: String,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Item>,
    /// Cursor of the last item queued for the app: where a reconnect resumes.
    resume_cursor: Option<String>,
    dedupe: Dedupe,
    sends: PendingSends,
    ack_pending: Option<String>,
    ack_due: Instant,
    ack_last: Option<Instant>,
    /// Latest `read` per conversation not yet written.
    reads: BTreeMap<String, u64>,
    /// Ephemeral frames (typing) for the current socket only.
    outbox: Vec<ClientFrame>,
    stopping: bool,
    close_waiters: Vec<oneshot::Sender<()>>,
    /// Why the client stopped, if not by request: pending sends fail with it.
    fatal: Option<Error>,
}

impl Driver {
    fn new(
        config: ClientConfig,
        url: String,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Item>,
    ) -> Driver {
        Driver {
            resume_cursor: config.cursor.clone(),
            config,
            url,
            commands,
            events,
            dedupe: Dedupe::default(),
            sends: PendingSends::default(),
            ack_pending: None,
            ack_due: Instant::now(),
            ack_last: None,
            reads: BTreeMap::new(),
            outbox: Vec::new(),
            stopping: false,
            close_waiters: Vec::new(),
            fatal: None,
        }
    }

    async fn run(mut self, first: Connection) {
        let mut conn = first;
        loop {
            match self.serve(&mut conn).await {
                Flow::Stop => {
                    if self.fatal.is_none() {
                        let _ = conn.close().await;
                    }
                    break;
                }
                Flow::Lost(reason) => {
                    tracing::info!(%reason, "connection lost");
                    drop(conn);
                    self.emit(Item::event(Event::Disconnected { reason }));
                }
            }
            match self.reconnect().await {
                Some(next) => {
                    tracing::info!("reconnected");
                    conn = next;
                    self.emit(Item::event(Event::Reconnected));
                }
                None => break,
            }
        }
        self.shutdown();
    }

    /// Runs one socket until it is lost or the client stops.
    async fn serve(&mut self, conn: &mut Connection) -> Flow {
        let now = Instant::now();
        let mut link = Link {
            last_rx: now,
            last_ping: now,
        };
        // Typing from before the drop is stale; everything in flight on the old socket is due.
        self.outbox.clear();
        for send in self.sends.by_order.values_mut() {
            if send.in_flight {
                send.in_flight = false;
                send.due = now;
            }
        }
        loop {
            if let Err(e) = self.pump(conn, &mut link).await {
                return Flow::Lost(format!("write failed: {e}"));
            }
            if self.stopping {
                return Flow::Stop;
            }
            let deadline = self.next_deadline(&link);
            let wake = tokio::select! {
                frame = conn.next() => Wake::Frame(frame),
                command = self.commands.recv() => Wake::Command(command),
                () = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Frame(Ok(Some(frame))) => {
                    link.last_rx = Instant::now();
                    if let Some(flow) = self.on_frame(frame) {
                        return flow;
                    }
                }
                Wake::Frame(Ok(None)) => {
                    return Flow::Lost(match (conn.close_code(), conn.close_reason()) {
                        (Some(code), Some(reason)) if !reason.is_empty() => {
                            format!("closed by server: {code} {reason}")
                        }
                        (Some(code), _) => format!("closed by server: {code}"),
                        (None, _) => "connection closed".to_owned(),
                    });
                }
                Wake::Frame(Err(e)) if *e.kind() == ErrorKind::Protocol => {
                    // One frame we cannot read is no reason to drop the rest: the server may be
                    // newer than this SDK. Skipping it cannot lose a message for good, because
                    // cursors only move on messages we did read.
                    tracing::warn!(error = %e, "skipping unreadable frame");
                }
                Wake::Frame(Err(e)) => return Flow::Lost(e.to_string()),
                Wake::Command(None) => return Flow::Stop,
                Wake::Command(Some(command)) => self.on_command(command),
                Wake::Timer => {
                    let silent = link.last_rx.elapsed();
                    if silent >= self.config.idle_timeout {
                        return Flow::Lost(format!("no frame from the server for {silent:?}"));
                    }
                }
            }
        }
    }

    /// Writes everything that is due: typing, reads, the coalesced ack, sends, a ping.
    async fn pump(&mut self, conn: &mut Connection, link: &mut Link) -> Result<(), Error> {
        let now = Instant::now();
        for frame in std::mem::take(&mut self.outbox) {
            self.write(conn, &frame).await?;
        }
        while let Some((conversation, seq)) = self.reads.pop_first() {
            let frame = ClientFrame::Read {
                conversation: conversation.clone(),
                seq,
            };
            if let Err(e) = self.write(conn, &frame).await {
                // Not known to have arrived: send it again after the reconnect.
                self.reads.insert(conversation, seq);
                return Err(e);
            }
        }
        let ack = if self.ack_due <= now {
            self.ack_pending.take()
        } else {
            None
        };
        if let Some(cursor) = ack {
            let frame = ClientFrame::Ack { cursor };
            if let Err(e) = self.write(conn, &frame).await {
                if let ClientFrame::Ack { cursor } = frame {
                    self.ack_pending.get_or_insert(cursor);
                }
                return Err(e);
            }
            self.ack_last = Some(now);
        }
        let due: Vec<u64> = self
            .sends
            .by_order
            .iter()
            .filter(|(_, s)| s.due <= now)
            .map(|(order, _)| *order)
            .collect();
        for order in due {
            let abandoned = self
                .sends
                .by_order
                .get(&order)
                .is_some_and(PendingSend::abandoned);
            if abandoned {
                self.sends.remove_order(order);
                continue;
            }
            let Some(send) = self.sends.by_order.get(&order) else {
                continue;
            };
            let frame = send.frame.clone();
            self.write(conn, &frame).await?;
            if let Some(send) = self.sends.by_order.get_mut(&order) {
                send.in_flight = true;
                send.due = now + self.config.send_timeout;
            }
        }
        if now >= link.last_rx.max(link.last_ping) + self.config.ping_interval {
            self.write(conn, &ClientFrame::Ping).await?;
            link.last_ping = now;
        }
        Ok(())
    }

    /// One write, bounded by `send_timeout` so a server that stopped reading cannot wedge us.
    async fn write(&self, conn: &mut Connection, frame: &ClientFrame) -> Result<(), Error> {
        timeout(self.config.send_timeout, conn.send(frame))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout))?
    }

    fn next_deadline(&self, link: &Link) -> Instant {
        let mut deadline = (link.last_rx + self.config.idle_timeout)
            .min(link.last_rx.max(link.last_ping) + self.config.ping_interval);
        if self.ack_pending.is_some() {
            deadline = deadline.min(self.ack_due);
        }
        for send in self.sends.by_order.values() {
            deadline = deadline.min(send.due);
        }
        deadline
    }

    fn on_frame(&mut self, frame: ServerFrame) -> Option<Flow> {
        match frame {
            ServerFrame::Message { message, cursor } => {
                self.resume_cursor = Some(cursor.clone());
                let event = if self.dedupe.first_time(&message) {
                    Some(Event::Message {
                        message,
                        cursor: cursor.clone(),
                    })
                } else {
                    tracing::debug!(id = %message.id, "dropping repeated message");
                    None
                };
                self.emit(Item {
                    event,
                    cursor: Some(cursor),
                    urgent_ack: false,
                });
            }
            ServerFrame::Synced { cursor } => {
                self.resume_cursor = Some(cursor.clone());
                self.emit(Item {
                    event: Some(Event::Synced {
                        cursor: cursor.clone(),
                    }),
                    cursor: Some(cursor),
                    urgent_ack: true,
                });
            }
            ServerFrame::Sent {
                client_id,
                id,
                conversation,
                seq,
                ts,
            } => {
                // No match: the answer to an earlier attempt of a send that already finished.
                if let Some(send) = self.sends.remove(&client_id) {
                    send.finish(&Ok(Sent {
                        client_id,
                        id,
                        conversation,
                        seq,
                        ts,
                    }));
                }
            }
            ServerFrame::Error {
                code,
                message,
                reference,
            } => return self.on_error(code, message, reference),
            ServerFrame::Receipt {
                conversation,
                user_id,
                kind,
                seq,
            } => self.emit(Item::event(Event::Receipt {
                conversation,
                user_id,
                kind,
                seq,
            })),
            ServerFrame::Presence {
                user_id,
                status,
                last_seen,
            } => self.emit(Item::event(Event::Presence {
                user_id,
                status,
                last_seen,
            })),
            ServerFrame::Typing { from, conversation } => {
                self.emit(Item::event(Event::Typing { from, conversation }))
            }
            ServerFrame::Pong => {}
            ServerFrame::Welcome { .. } => tracing::warn!("unexpected second welcome"),
        }
        None
    }

    fn on_error(
        &mut self,
        code: ErrorCode,
        message: String,
        reference: Option<String>,
    ) -> Option<Flow> {
        let now = Instant::now();
        let (min, max) = (self.config.min_backoff, self.config.max_backoff);
        if let Some(send) = reference.as_deref().and_then(|r| self.sends.get_mut(r)) {
            if matches!(code, ErrorCode::RateLimited | ErrorCode::Unavailable) {
                send.retries += 1;
                send.in_flight = false;
                send.due = now + backoff(min, max, send.retries - 1);
                tracing::debug!(client_id = %send.client_id, %code, "send will be retried");
                return None;
            }
            let client_id = send.client_id.clone();
            if let Some(send) = self.sends.remove(&client_id) {
                send.finish(&Err(Error::new(ErrorKind::Server { code, message })));
            }
            return None;
        }
        let fatal = code == ErrorCode::Unauthorized;
        if fatal {
            // The token was revoked: reconnecting would only be refused again.
            self.fatal = Some(Error::new(ErrorKind::Server {
                code,
                message: message.clone(),
            }));
        }
        self.emit(Item::event(Event::Error {
            code,
            message,
            reference,
        }));
        fatal.then_some(Flow::Stop)
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Send {
                to,
                client_id,
                body,
                reply,
            } => {
                if let Some(send) = self.sends.get_mut(&client_id) {
                    send.waiters.push(reply);
                    return;
                }
                self.sends.insert(PendingSend {
                    frame: ClientFrame::Send {
                        to,
                        client_id: client_id.clone(),
                        body,
                    },
                    client_id,
                    waiters: vec![reply],
                    due: now,
                    in_flight: false,
                    retries: 0,
                });
            }
            Command::Ack { cursor, urgent } => {
                let due = match (urgent, self.ack_last) {
                    (false, Some(last)) => (last + ACK_INTERVAL).max(now),
                    _ => now,
                };
                // A later ack covers an earlier one; keep the earlier deadline.
                self.ack_due = if self.ack_pending.is_some() {
                    self.ack_due.min(due)
                } else {
                    due
                };
                self.ack_pending = Some(cursor);
            }
            Command::Read { conversation, seq } => {
                let mark = self.reads.entry(conversation).or_insert(seq);
                *mark = (*mark).max(seq);
            }
            Command::Typing { to } => self.outbox.push(ClientFrame::Typing { to }),
            Command::Close { done } => {
                self.stopping = true;
                self.close_waiters.push(done);
            }
        }
    }

    /// Waits out the backoff and dials until a socket reaches `welcome`; `None` to stop.
    async fn reconnect(&mut self) -> Option<Connection> {
        let mut attempt = 0;
        loop {
            let delay = backoff(self.config.min_backoff, self.config.max_backoff, attempt);
            attempt = attempt.saturating_add(1);
            let wake_at = Instant::now() + delay;
            loop {
                let command = tokio::select! {
                    () = sleep_until(wake_at) => break,
                    command = self.commands.recv() => command,
                };
                if !self.handle_offline(command) {
                    return None;
                }
            }
            // Owned copies: the dial runs while commands keep mutating `self`.
            let dial = {
                let url = self.url.clone();
                let token = self.config.token.clone();
                let cursor = self.resume_cursor.clone();
                let limit = self.config.connect_timeout;
                async move { Connection::connect_within(&url, &token, cursor.as_deref(), limit).await }
            };
            tokio::pin!(dial);
            let result = loop {
                let command = tokio::select! {
                    result = &mut dial => break result,
                    command = self.commands.recv() => command,
                };
                if !self.handle_offline(command) {
                    return None;
                }
            };
            match result {
                Ok((conn, _welcome)) => return Some(conn),
                Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                    tracing::warn!(error = %e, "token refused; stopping");
                    let (code, message) = match e.kind() {
                        ErrorKind::Server { code, message } => (*code, message.clone()),
                        _ => (ErrorCode::Unauthorized, String::new()),
                    };
                    self.emit(Item::event(Event::Error {
                        code,
                        message,
                        reference: None,
                    }));
                    self.fatal = Some(e);
                    return None;
                }
                Err(e) => tracing::debug!(error = %e, attempt, "reconnect failed"),
            }
        }
    }

    /// Handles a command while there is no socket; false once the client should stop.
    fn handle_offline(&mut self, command: Option<Command>) -> bool {
        match command {
            None => false,
            Some(command) => {
                self.on_command(command);
                !self.stopping
            }
        }
    }

    fn emit(&self, item: Item) {
        // Fails only when every handle is gone, and then the task is about to stop anyway.
        let _ = self.events.send(item);
    }

    fn shutdown(mut self) {
        let error = self
            .fatal
            .take()
            .unwrap_or_else(|| Error::new(ErrorKind::Closed));
        for send in self.sends.drain() {
            send.finish(&Err(error.kind_only()));
        }
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
        // Dropping `self.events` here ends the app's event stream after what is queued.
    }
}

/// Exponential backoff with jitter: attempt `n` waits between half of and the full
/// `min * 2^n`, capped at `max` and never below `min`. The jitter keeps many clients that
/// lost the same server from reconnecting in lockstep.
fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let max = max.max(min);
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let cap = min.saturating_mul(factor).min(max);
    let low = (cap / 2).max(min);
    if cap <= low {
        return cap;
    }
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(nanos(low)..=nanos(cap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, conversation: &str, seq: u64) -> Message {
        Message {
            id: Id(id),
            conversation: conversation.into(),
            seq,
            from: Id(1),
            to: Id(2),
            body: "x".into(),
            ts: 0,
        }
    }

    #[test]
    fn dedupe_by_id_and_by_seq() {
        let mut d = Dedupe::default();
        assert!(d.first_time(&message(10, "a", 1)));
        assert!(!d.first_time(&message(10, "a", 1)));
        assert!(d.first_time(&message(11, "a", 2)));
        // Lower seq in the same conversation: a repeat even with an unseen id.
        assert!(!d.first_time(&message(99, "a", 2)));
        assert!(d.first_time(&message(12, "b", 1)));
    }

    #[test]
    fn dedupe_forgets_old_ids_but_not_seqs() {
        let mut d = Dedupe::default();
        for i in 0..(RECENT_IDS as u64 + 5) {
            assert!(d.first_time(&message(i, &format!("c{i}"), 1)));
        }
        assert_eq!(d.recent.len(), RECENT_IDS);
        assert!(!d.recent.contains(&Id(0)));
        assert!(!d.first_time(&message(0, "c0", 1)));
    }

    #[test]
    fn config_debug_hides_the_token() {
        let shown = format!("{:?}", ClientConfig::new("http://h", "secret-token"));
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(backoff(min, max, 0), min);
        for attempt in 1..40 {
            let d = backoff(min, max, attempt);
            let cap = (min * 2u32.saturating_pow(attempt.min(20))).min(max);
            assert!(d >= min && d <= max, "{attempt}: {d:?}");
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?} vs {cap:?}");
        }
        assert_eq!(backoff(min, Duration::ZERO, 3), min);
    }
}
