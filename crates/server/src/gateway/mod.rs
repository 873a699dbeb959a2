//! The chat service (design login step 1, messaging steps 1-2 and 7-8): holds each client's
//! WebSocket, turns `send` frames into stored messages and delivers events to sockets.
//!
//! A socket's life: `hello` (authenticate) → register in the [`hub::Hub`] (live events start
//! queueing) → read the store after the cursor (with the rest of the login state, one round
//! trip) → `welcome` → catch-up → `synced` → live.
//! Registering *before* reading the store is what makes the hand-over exact: an event committed
//! after the read is already queued, one committed before is in the read, and queued events at
//! or below the last position sent are dropped. A live event that jumps ahead of the last
//! position sent (the queue reordered or lost one) is preceded by a read of the gap from the
//! store, so nothing is skipped or repeated.

pub mod hub;
mod limits;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use confab_protocol::{
    ClientFrame, ErrorCode, Id, MAX_BODY_BYTES, MAX_CLIENT_ID_CHARS, MAX_FRAME_BYTES, MessageFrame,
    Presence, PresenceStatus, ReceiptKind, ServerFrame,
};
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::{App, now_ms};
use crate::auth::token_hash;
use crate::error::Error;
use crate::presence;
use crate::store::{DeviceSession, LoginState, NewMessage, StreamEntry};
use crate::sync::SyncEvent;
use hub::{CloseReason, Outbound};
use limits::TokenBucket;
use queue::{QueueReceiver, TryRecvError};

/// WebSocket close codes used by the server.
pub mod close {
    /// Normal closure (idle timeout).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol violation: no `hello`, bad token, revoked token.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server could not continue this socket (a store read failed).
    pub const INTERNAL: u16 = 1011;
    /// The client reads too slowly; reconnect and catch up.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// How long a live event ahead of a missing position waits for it before the gap is read
/// from the store.
const GAP_WAIT: Duration = Duration::from_millis(25);
/// Live events held for a gap at most; more, and the gap is read from the store at once.
const MAX_HELD: usize = 256;
/// Read buffer of a socket: also the most one read takes from the kernel. Client frames are
/// small and arrive one at a time, and an idle socket holds this buffer for its lifetime
/// (it was a third of an idle socket's memory at 4 KiB); a bigger frame grows it.
const READ_BUFFER: usize = 256;
/// Bytes a socket's writer gathers before writing through (flushes write at once anyway).
const WRITE_BUFFER: usize = 8 * 1024;
/// Ready events and replies a socket gathers into one write after the one it woke for.
const COALESCE: usize = 64;
/// Stream entries read per store query during catch-up.
const CATCH_UP_PAGE: usize = 1000;

/// Work a frame started that answers later (a store write): the frame to send, if any.
type Pending = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send>>;
/// Typing relays allowed per peer per socket.
const TYPING_EVERY: Duration = Duration::from_secs(1);

/// Releases the connection slot taken at upgrade.
struct Slot(Arc<App>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .open_sockets
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET /v1/ws`.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    use std::sync::atomic::Ordering;
    let open = app.open_sockets.fetch_add(1, Ordering::Relaxed);
    let slot = Slot(app.clone());
    if open >= app.config.max_connections {
        app.metrics.connections_refused.inc();
        let now = now_ms();
        let logged = app.refusal_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(logged) >= 1000
            && app
                .refusal_logged_ms
                .compare_exchange(logged, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = app.config.max_connections,
                refused_total = app.metrics.connections_refused.get(),
                "connection refused: at the connection limit (logged at most once a second)"
            );
        }
        return Error::Client {
            code: ErrorCode::Unavailable,
            message: format!(
                "server is at its limit of {} connections",
                app.config.max_connections
            ),
        }
        .into_response();
    }
    // Boxed, not a String: it is held in the socket's task future (twice over).
    let header_token: Option<Box<str>> = crate::api::bearer_token(&headers).map(Box::from);
    let tracked = app.sockets.token();
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        // tungstenite's 128 KiB defaults would cost an idle socket far more than the rest
        // of its state; frames are small, and the buffers grow for the rare big one.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        // The socket is boxed before the task's future is made: what the future holds stays
        // in it for the socket's whole life, and the socket is a few hundred bytes. (Not
        // split: the loop reads and writes at different times, and halves cost a shared lock.)
        .on_upgrade(move |socket| socket_task(slot, Box::new(socket), header_token, tracked))
}

/// A socket's task, from the upgrade to its end. The slot doubles as the socket's handle on
/// the app: one pointer fewer in every task.
async fn socket_task(
    slot: Slot,
    ws: Box<WebSocket>,
    header_token: Option<Box<str>>,
    _tracked: tokio_util::task::task_tracker::TaskTrackerToken,
) {
    let mut io = Io { ws };
    if let Some(end) = run(&slot.0, &mut io, header_token).await {
        Box::pin(io.finish(end.0, end.1)).await;
    }
}

/// A socket.
struct Io {
    ws: Box<WebSocket>,
}

impl Io {
    async fn send(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        self.ws
            .send(WsMessage::Text(Utf8Bytes::from(frame.to_json())))
            .await
    }

    async fn feed(&mut self, frame: &ServerFrame) -> Result<(), axum::Error> {
        self.ws
            .feed(WsMessage::Text(Utf8Bytes::from(frame.to_json())))
            .await
    }

    /// The closing handshake: send a close frame, then read until the client answers (or a
    /// short timeout), so the close frame is not lost to a TCP reset.
    async fn finish(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if self.ws.send(WsMessage::Close(Some(frame))).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(m)) = self.ws.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// How a socket ends when the server ends it: close code and reason.
type End = Option<(u16, &'static str)>;

/// Reads `hello` and authenticates. `Err` ends the socket with the given close.
async fn hello(
    app: &App,
    io: &mut Io,
    header_token: Option<Box<str>>,
) -> Result<(DeviceSession, Option<String>, [u8; 32]), End> {
    let deadline = Instant::now() + app.config.hello_timeout;
    let text = loop {
        match tokio::time::timeout_at(deadline, io.ws.next()).await {
            Err(_) => return Err(Some((close::POLICY, "no hello within the timeout"))),
            Ok(None) => return Err(None),
            Ok(Some(Err(e))) => {
                return Err(match transport_error(e) {
                    Stop::Close(code, reason) => Some((code, reason)),
                    Stop::Gone => None,
                });
            }
            Ok(Some(Ok(WsMessage::Text(t)))) => break t,
            Ok(Some(Ok(WsMessage::Close(_)))) => return Err(None),
            Ok(Some(Ok(WsMessage::Binary(_)))) => {
                let _ = io
                    .send(&ServerFrame::error(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send JSON text",
                        None,
                    ))
                    .await;
                return Err(Some((close::POLICY, "expected hello")));
            }
            Ok(Some(Ok(_))) => continue,
        }
    };
    let refuse = async |io: &mut Io, code: ErrorCode, message: &str, reason: &'static str| {
        let _ = io.send(&ServerFrame::error(code, message, None)).await;
        Err(Some((close::POLICY, reason)))
    };
    let (token, cursor) = match ClientFrame::parse(&text) {
        Ok(ClientFrame::Hello { token, cursor }) => {
            (token.or(header_token.map(String::from)), cursor)
        }
        Ok(_) => {
            return refuse(
                io,
                ErrorCode::BadRequest,
                "the first frame must be hello",
                "expected hello",
            )
            .await;
        }
        Err(e) => return refuse(io, ErrorCode::BadRequest, &e.message, "expected hello").await,
    };
    let Some(token) = token else {
        return refuse(
            io,
            ErrorCode::Unauthorized,
            "hello needs a token",
            "unauthorized",
        )
        .await;
    };
    let hash = token_hash(&token);
    match app.store.device_by_token(hash).await {
        Ok(Some(session)) => Ok((session, cursor, hash)),
        Ok(None) => {
            refuse(
                io,
                ErrorCode::Unauthorized,
                "invalid or revoked token",
                "unauthorized",
            )
            .await
        }
        Err(e) => {
            let _ = io.send(&Error::from(e).to_frame(None)).await;
            Err(Some((close::INTERNAL, "store unavailable")))
        }
    }
}

/// One socket, from `hello` to its end. Returns the close to send, if the server ends it.
///
/// The login and the logout are boxed: this future is the socket task's for its whole life,
/// and it holds space for its largest await, so only the live loop's state should be inline.
async fn run(app: &Arc<App>, io: &mut Io, header_token: Option<Box<str>>) -> End {
    let Live {
        mut conn,
        login,
        membership,
        mut events,
        mut close,
    } = match Box::pin(login(app, io, header_token)).await {
        Ok(live) => live,
        Err(end) => return end,
    };
    // A debug span: an enabled span costs every socket ~200 bytes of formatted fields, a
    // twentieth of an idle socket's budget; `RUST_LOG=debug` brings the context back.
    let span = tracing::debug_span!("socket", user = %conn.session.user_id, device = %conn.session.device_id, socket = conn.socket);
    app.metrics.connections.inc();
    // The start is boxed, and the login state with it: what this future holds across an
    // await it holds for the socket's whole life.
    let result = match Box::pin(conn.start(io, login))
        .instrument(span.clone())
        .await
    {
        Ok(()) => {
            conn.serve(io, &mut events, &mut close)
                .instrument(span)
                .await
        }
        Err(stop) => Err(stop),
    };
    app.metrics.connections.dec();
    Box::pin(conn.end()).await;
    drop(membership);
    match result {
        Ok(()) | Err(Stop::Gone) => None,
        Err(Stop::Close(code, reason)) => Some((code, reason)),
    }
}

/// A socket past login: its state, what the store had for it, and its hub registration.
struct Live {
    conn: Conn,
    login: Box<LoginState>,
    membership: hub::Membership,
    events: QueueReceiver,
    close: oneshot::Receiver<CloseReason>,
}

/// `hello`, the cursor, the hub registration and the login state read.
async fn login(app: &Arc<App>, io: &mut Io, header_token: Option<Box<str>>) -> Result<Live, End> {
    let (session, cursor, token_hash) = Box::pin(hello(app, io, header_token)).await?;
    let user = session.user_id;
    let start_pos = match cursor {
        None => {
            let pending = app
                .pending_acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&session.device_id)
                .copied();
            session.cursor.max(pending.unwrap_or(0))
        }
        Some(c) => match parse_cursor(&c) {
            Some(p) => p,
            None => {
                let _ = io
                    .send(&ServerFrame::error(
                        ErrorCode::BadRequest,
                        "malformed cursor",
                        None,
                    ))
                    .await;
                return Err(Some((close::POLICY, "malformed cursor")));
            }
        },
    };
    // Registered before the store is read, so that every event after the read reaches this
    // socket live; the ones the read already covers are skipped by position.
    let registration = app.hub.register(user, session.device_id);
    let socket = registration.membership.socket;
    // Shutdown is announced through the hub; a socket registered after that sees the token.
    if app.shutdown.is_cancelled() {
        return Err(Some((close::GOING_AWAY, "server shutting down")));
    }
    let login = match app.store.login_state(user, start_pos, CATCH_UP_PAGE).await {
        Ok(login) if start_pos > login.head => {
            let _ = io
                .send(&ServerFrame::error(
                    ErrorCode::BadRequest,
                    "cursor is ahead of this account's stream",
                    None,
                ))
                .await;
            return Err(Some((close::POLICY, "bad cursor")));
        }
        Ok(login) => login,
        Err(e) => {
            let _ = io.send(&Error::from(e).to_frame(None)).await;
            return Err(Some((close::INTERNAL, "store unavailable")));
        }
    };
    let conn = Conn {
        app: app.clone(),
        session,
        socket,
        token_hash,
        last: start_pos,
        acked: start_pos,
        acks: None,
        out: Vec::new(),
        work: None,
        typing: None,
        held: BTreeMap::new(),
        gap_since: None,
    };
    Ok(Live {
        conn,
        login: Box::new(login),
        membership: registration.membership,
        events: registration.events,
        close: registration.close,
    })
}

fn parse_cursor(c: &str) -> Option<u64> {
    if c.is_empty() || c.len() > 20 || !c.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    c.parse().ok()
}

/// A socket past `hello`.
struct Conn {
    app: Arc<App>,
    session: DeviceSession,
    /// Cluster-unique id of this socket (for presence).
    socket: u64,
    /// The hash of the token the socket authenticated with, to re-check it on resync.
    token_hash: [u8; 32],
    /// When a typing relay to each peer last went out; made at the first `typing` frame
    /// (a map inline would cost every socket 48 bytes).
    #[allow(clippy::box_collection)] // the box is the point: 8 bytes inline, not 48
    typing: Option<Box<HashMap<Id, Instant>>>,
    /// Live events that arrived ahead of a missing position, by position.
    held: BTreeMap<u64, Arc<MessageFrame>>,
    /// Since when `held` has been waiting for a missing position.
    gap_since: Option<Instant>,
    /// Highest stream position sent to this socket.
    last: u64,
    /// Highest position this socket acknowledged.
    acked: u64,
    /// Hands acks to this socket's ack task, which writes them to the store. Started at the
    /// first ack that moves the cursor: an idle socket pays for neither.
    acks: Option<(watch::Sender<u64>, tokio::task::JoinHandle<()>)>,
    /// Frames queued for the socket loop's next write.
    out: Vec<WsMessage>,
    /// Store work the loop does after its next write.
    work: Option<Work>,
}

/// Store work a socket loop does between writes (it reads the store, so it is not done
/// inside an event handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Read the stream up to the highest held event.
    FillGap,
    /// Re-check the token and read whatever the store has after the last sent position.
    Resync,
}

/// Work a socket's frames started (store writes, relays) whose replies are pending. The set
/// is made at the first such frame: a socket that never sends does without it.
///
/// Sends that the socket polls itself (see [`Conn::start_send`]) are polled while it waits to
/// write, too, so a slow client does not hold back its own messages; and the ones still
/// pending when the socket ends are finished by a task of their own.
#[derive(Default)]
struct Replies(Option<FuturesUnordered<Pending>>);

impl Replies {
    fn push(&mut self, work: Pending) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(work);
    }

    /// Queues the replies that are ready now; registers `cx` for the next one.
    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>, out: &mut Vec<WsMessage>) {
        let Some(set) = &mut self.0 else { return };
        while let std::task::Poll::Ready(Some(reply)) = set.poll_next_unpin(cx) {
            out.extend(reply.as_ref().map(text_frame));
        }
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, FuturesUnordered::len)
    }

    /// The next finished reply; `None` when nothing is pending.
    async fn next(&mut self) -> Option<Option<ServerFrame>> {
        match &mut self.0 {
            Some(set) => set.next().await,
            None => None,
        }
    }
}

impl Drop for Replies {
    fn drop(&mut self) {
        // A send that was read is stored and published even if its socket is gone; the
        // client's retry with the same `client_id` then finds it.
        if let Some(mut set) = self.0.take()
            && !set.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { while set.next().await.is_some() {} });
        }
    }
}

/// A server frame as a WebSocket text frame.
fn text_frame(frame: &ServerFrame) -> WsMessage {
    WsMessage::Text(Utf8Bytes::from(frame.to_json()))
}

/// Why a socket stops.
enum Stop {
    /// The client went away or the transport failed: nothing more can be sent.
    Gone,
    /// The server ends it with this close.
    Close(u16, &'static str),
}

impl Conn {
    /// After the socket's end: the last ack is written, and the socket is marked gone; if it
    /// was the user's last, `last_seen` is stored and friends are told.
    async fn end(&mut self) {
        // Dropping the sender lets the ack task write the last ack and stop.
        if let Some((sender, task)) = self.acks.take() {
            drop(sender);
            let _ = task.await;
        }
        let (app, user, now) = (&self.app, self.session.user_id, now_ms());
        match app.presence.disconnected(user, self.socket, now).await {
            Ok(true) => {
                if let Err(e) = app.store.set_last_seen(user, now).await {
                    tracing::warn!(error = %e, "storing last_seen failed");
                }
                let offline = Presence {
                    status: PresenceStatus::Offline,
                    last_seen: now,
                };
                presence::notify_friends(&*app.store, &*app.sync, &*app.presence, user, offline)
                    .await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed"),
        }
    }

    /// `welcome`, presence, the catch-up (its first page read with the login state) and
    /// `synced`.
    async fn start(&mut self, io: &mut Io, login: Box<LoginState>) -> Result<(), Stop> {
        let welcome = ServerFrame::Welcome {
            user_id: self.session.user_id,
            device_id: self.session.device_id,
        };
        io.feed(&welcome).await.map_err(|_| Stop::Gone)?;
        let LoginState {
            friends, entries, ..
        } = *login;
        self.go_online(io, &friends).await?;
        let first_page_full = entries.len() >= CATCH_UP_PAGE;
        // No send has been read yet: nothing is pending.
        let mut none_pending = Replies::default();
        self.queue_entries(entries);
        if first_page_full {
            self.write_out(io, &mut none_pending).await?;
            self.catch_up(io, None, &mut none_pending).await?;
        }
        // `welcome`, presence, the first page and `synced` in one write where they fit: a
        // write less per connect for both sides.
        self.queue(&ServerFrame::Synced {
            cursor: self.last.to_string(),
        });
        self.write_out(io, &mut none_pending).await?;
        // Most sockets are idle from here on: they keep no queue.
        self.out = Vec::new();
        Ok(())
    }

    /// The live loop: client frames, hub events, replies of started work, pings.
    async fn serve(
        &mut self,
        io: &mut Io,
        events: &mut QueueReceiver,
        close_rx: &mut oneshot::Receiver<CloseReason>,
    ) -> Result<(), Stop> {
        let app = self.app.clone();
        let cfg = &app.config;
        let mut sends = TokenBucket::new(cfg.send_rate_per_sec, cfg.send_burst);
        let mut frames = TokenBucket::new(cfg.frame_rate_per_sec, cfg.frame_burst);
        let mut inflight = Replies::default();
        let mut heard = Instant::now();
        // One timer serves both the ping and the gap wait: each costs a timer entry that an
        // idle socket would hold all its life.
        let mut next_ping = Instant::now() + cfg.ping_interval;
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);

        loop {
            let due = match self.gap_since {
                Some(since) => next_ping.min(since + GAP_WAIT),
                None => next_ping,
            };
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            // Handlers only queue frames in `self.out` (synchronously); the one await that
            // writes them comes after, which keeps this task's future small for idle sockets.
            tokio::select! {
                biased;
                // Shutdown comes this way too (`Hub::close_all`): one waiter, not two.
                reason = &mut *close_rx => {
                    return Err(match reason {
                        Ok(CloseReason::Revoked) => Stop::Close(close::POLICY, "token revoked"),
                        Ok(CloseReason::ShuttingDown) => Stop::Close(close::GOING_AWAY, "server shutting down"),
                        _ => Stop::Close(close::TRY_AGAIN_LATER, "too slow: reconnect to catch up"),
                    });
                }
                Some(frame) = inflight.next(), if inflight.len() > 0 => {
                    if let Some(frame) = frame {
                        self.queue(&frame);
                    }
                }
                event = events.recv() => self.on_event(event)?,
                incoming = io.ws.next(), if inflight.len() < cfg.max_inflight_sends => {
                    heard = Instant::now();
                    match incoming {
                        None => return Err(Stop::Gone),
                        Some(Err(e)) => return Err(transport_error(e)),
                        Some(Ok(WsMessage::Text(text))) => {
                            if !frames.take() {
                                // Only on this refusal path is the frame parsed, for its `ref`.
                                let reference = match ClientFrame::parse(&text) {
                                    Ok(ClientFrame::Send { client_id, .. }) => Some(client_id),
                                    _ => None,
                                };
                                self.queue(&ServerFrame::error(ErrorCode::RateLimited, "too many frames; slow down", reference));
                            } else if let Some(reply) = self.handle(&text, &mut sends, &mut inflight) {
                                self.queue(&reply);
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) => return Err(Stop::Gone),
                        Some(Ok(WsMessage::Binary(_))) => {
                            self.queue(&ServerFrame::error(ErrorCode::BadRequest, "binary frames are not supported; send JSON text", None));
                        }
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if self.gap_since.is_some_and(|since| now >= since + GAP_WAIT) {
                        self.want(Work::FillGap);
                    }
                    if now >= next_ping {
                        if heard.elapsed() >= cfg.idle_timeout {
                            return Err(Stop::Close(close::NORMAL, "idle timeout"));
                        }
                        self.out.push(WsMessage::Ping(Default::default()));
                        next_ping = now + cfg.ping_interval;
                    }
                }
            }
            // Under load more events and replies are usually ready by now: they go out in
            // the same write (`write_out` takes the finished replies), so a busy socket costs
            // one syscall per batch, not per frame.
            for _ in 0..COALESCE {
                match events.try_recv() {
                    Ok(event) => self.on_event(Some(event))?,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => self.on_event(None)?,
                }
            }
            self.write_out(io, &mut inflight).await?;
            // Store work runs after the queued frames are written, so order is kept.
            match self.work.take() {
                Some(Work::FillGap) => Box::pin(self.fill_gap(io, &mut inflight)).await?,
                Some(Work::Resync) => Box::pin(self.resync(io, &mut inflight)).await?,
                None => {}
            }
        }
    }

    /// Asks for store work after the next write. A resync reads up to the stream head and
    /// so also fills any gap: it wins over a gap fill.
    fn want(&mut self, work: Work) {
        if work == Work::Resync || self.work.is_none() {
            self.work = Some(work);
        }
    }

    /// Queues a frame for the loop's next write.
    fn queue(&mut self, frame: &ServerFrame) {
        self.out.push(text_frame(frame));
    }

    /// Writes the queued frames in one go. Polled by hand rather than through `feed` and
    /// `flush` futures: this future's state is part of every socket's task for its life.
    /// Replies that finish meanwhile go out in the same write.
    async fn write_out(&mut self, io: &mut Io, inflight: &mut Replies) -> Result<(), Stop> {
        let (out, ws) = (&mut self.out, &mut *io.ws);
        let mut next = 0;
        std::future::poll_fn(|cx| {
            inflight.poll_ready(cx, out);
            while next < out.len() {
                std::task::ready!(ws.poll_ready_unpin(cx))?;
                // A placeholder that allocates nothing takes the sent frame's slot.
                let frame =
                    std::mem::replace(&mut out[next], WsMessage::Binary(Default::default()));
                ws.start_send_unpin(frame)?;
                next += 1;
            }
            ws.poll_flush_unpin(cx)
        })
        .await
        .map_err(|_| Stop::Gone)?;
        out.clear();
        // A burst can leave a large queue behind; an idle socket should not keep it.
        if out.capacity() > COALESCE {
            *out = Vec::new();
        }
        Ok(())
    }

    /// One event from the hub: frames are queued; store work is left in `self.work`.
    fn on_event(&mut self, event: Option<Outbound>) -> Result<(), Stop> {
        match event {
            Some(Outbound::Message { frame, pos }) => self.deliver(frame, pos),
            Some(Outbound::Frame(text)) => self.out.push(WsMessage::Text(*text)),
            Some(Outbound::Resync) => self.want(Work::Resync),
            None => {
                return Err(Stop::Close(
                    close::TRY_AGAIN_LATER,
                    "too slow: reconnect to catch up",
                ));
            }
        }
        Ok(())
    }

    /// Handles one client text frame; returns an immediate reply, if any.
    fn handle(
        &mut self,
        text: &str,
        sends: &mut TokenBucket,
        inflight: &mut Replies,
    ) -> Option<ServerFrame> {
        let frame = match ClientFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                return Some(ServerFrame::error(
                    ErrorCode::BadRequest,
                    e.message,
                    e.reference,
                ));
            }
        };
        match frame {
            ClientFrame::Ping => Some(ServerFrame::Pong),
            ClientFrame::Hello { .. } => Some(ServerFrame::error(
                ErrorCode::BadRequest,
                "hello was already received on this socket",
                None,
            )),
            ClientFrame::Send {
                to,
                client_id,
                body,
            } => {
                let reference = Some(client_id.clone());
                if let Err(e) = self.check_send(to, &client_id, &body) {
                    return Some(e.to_frame(reference));
                }
                if !sends.take() {
                    return Some(
                        Error::rate_limited(
                            "send rate exceeded; retry later with the same client_id",
                        )
                        .to_frame(reference),
                    );
                }
                self.start_send(inflight, to, client_id, body);
                None
            }
            ClientFrame::Read { conversation, seq } => {
                inflight.push(detached(mark_read(
                    self.app.clone(),
                    self.session,
                    conversation,
                    seq,
                )));
                None
            }
            ClientFrame::Typing { to } => {
                let now = Instant::now();
                let typing = self.typing.get_or_insert_default();
                let due = typing
                    .get(&to)
                    .is_none_or(|t| now.duration_since(*t) >= TYPING_EVERY);
                if due && to != self.session.user_id {
                    if typing.len() > 1024 {
                        typing.retain(|_, t| now.duration_since(*t) < TYPING_EVERY);
                    }
                    typing.insert(to, now);
                    inflight.push(detached(relay_typing(
                        self.app.clone(),
                        self.session.user_id,
                        to,
                    )));
                }
                None
            }
            ClientFrame::Ack { cursor } => match parse_cursor(&cursor) {
                Some(pos) => {
                    // A socket can only acknowledge what it was sent.
                    let pos = pos.min(self.last);
                    let mut pending = self
                        .app
                        .pending_acks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let entry = pending.entry(self.session.device_id).or_insert(pos);
                    *entry = (*entry).max(pos);
                    drop(pending);
                    if pos > self.acked {
                        self.acked = pos;
                        match &self.acks {
                            Some((sender, _)) => {
                                sender.send_replace(pos);
                            }
                            None => {
                                let (sender, receiver) = watch::channel(pos);
                                let task = tokio::spawn(ack_writer(
                                    self.app.clone(),
                                    self.session,
                                    receiver,
                                ));
                                self.acks = Some((sender, task));
                            }
                        }
                    }
                    None
                }
                None => Some(ServerFrame::error(
                    ErrorCode::BadRequest,
                    "malformed cursor",
                    None,
                )),
            },
        }
    }

    fn check_send(&self, to: Id, client_id: &str, body: &str) -> Result<(), Error> {
        let n = client_id.chars().count();
        if n == 0 || n > MAX_CLIENT_ID_CHARS {
            return Err(Error::bad_request("client_id must be 1-64 characters"));
        }
        if body.is_empty() {
            return Err(Error::bad_request("body must not be empty"));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(Error::too_large(format!(
                "body is {} bytes; the limit is {MAX_BODY_BYTES}",
                body.len()
            )));
        }
        if to == self.session.user_id {
            return Err(Error::bad_request("cannot send a message to yourself"));
        }
        Ok(())
    }

    /// Login steps 2-4: marks the socket online, tells friends if the user just came online,
    /// and tells this socket which friends are online now.
    /// `friends` were read at login: one read serves both the announcement and this
    /// socket's list.
    async fn go_online(&mut self, io: &mut Io, friends: &[Id]) -> Result<(), Stop> {
        let app = self.app.clone();
        let user = self.session.user_id;
        let now = now_ms();
        match app.presence.connected(user, self.socket, now).await {
            Ok(true) => {
                // `last_seen` is persisted when the user goes offline; while online the
                // presence service holds it, so connecting costs no store write.
                let online = Presence {
                    status: PresenceStatus::Online,
                    last_seen: now,
                };
                presence::notify(&*app.sync, &*app.presence, friends, user, online).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed"),
        }
        let statuses = app.presence.status(friends).await.unwrap_or_default();
        for (friend, p) in friends.iter().zip(statuses) {
            if p.status == PresenceStatus::Online {
                let frame = ServerFrame::Presence {
                    user_id: *friend,
                    status: p.status,
                    last_seen: p.last_seen,
                };
                io.feed(&frame).await.map_err(|_| Stop::Gone)?;
            }
        }
        Ok(())
    }

    /// Sends a live event in stream order. An event ahead of the next expected position is
    /// held briefly: the missing ones are usually a moment behind (two publishers raced).
    /// If they do not come within [`GAP_WAIT`] (the queue lost one), the gap is read from the
    /// store; so the queue can reorder or lose events without the client seeing it.
    fn deliver(&mut self, message: Arc<MessageFrame>, pos: u64) {
        if pos <= self.last {
            return; // already sent during catch-up or a gap fill
        }
        if pos > self.last + 1 {
            self.held.insert(pos, message);
            self.gap_since.get_or_insert_with(Instant::now);
            if self.held.len() >= MAX_HELD {
                self.want(Work::FillGap);
            }
            return;
        }
        self.queue_message(&message, pos);
        while let Some(entry) = self.held.first_entry() {
            let next = *entry.key();
            if next <= self.last {
                entry.remove();
            } else if next == self.last + 1 {
                let message = entry.remove();
                self.queue_message(&message, next);
            } else {
                break;
            }
        }
        if self.held.is_empty() {
            self.gap_since = None;
        }
    }

    /// Queues one message frame and counts it as sent.
    fn queue_message(&mut self, message: &MessageFrame, pos: u64) {
        self.queue_at(message.with_cursor(pos), pos);
    }

    /// Queues the `message` frame `text` of stream position `pos` and counts it as sent.
    fn queue_at(&mut self, text: String, pos: u64) {
        self.out.push(WsMessage::Text(Utf8Bytes::from(text)));
        self.last = pos;
    }

    /// Starts a `send`. Where the store's append needs no polling to go on (its transaction
    /// runs on a writer thread) the socket polls the send itself; elsewhere it gets its own
    /// task. With a task per message (spawn, join handle, two wake-ups) the embedded server
    /// delivered 15-19 % less at its peak (docs/benchmarks/history.md).
    fn start_send(&self, inflight: &mut Replies, to: Id, client_id: String, body: String) {
        let work = send_message(self.app.clone(), self.session.user_id, to, client_id, body);
        if self.app.store.appends_run_unpolled() {
            inflight.push(Box::pin(work));
        } else {
            inflight.push(detached(work));
        }
    }

    /// Periodic repair in a cluster: closes the socket if its token was revoked meanwhile,
    /// and sends whatever the store has after the last position sent.
    async fn resync(&mut self, io: &mut Io, inflight: &mut Replies) -> Result<(), Stop> {
        match self.app.store.device_by_token(self.token_hash).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Stop::Close(close::POLICY, "token revoked")),
            Err(_) => return Ok(()), // store trouble: try again next time
        }
        self.catch_up(io, None, inflight).await?;
        self.held.retain(|pos, _| *pos > self.last);
        if self.held.is_empty() {
            self.gap_since = None;
        }
        Ok(())
    }

    /// Reads from the store everything up to the highest held event, then drops the held ones.
    async fn fill_gap(&mut self, io: &mut Io, inflight: &mut Replies) -> Result<(), Stop> {
        let Some(&upto) = self.held.keys().next_back() else {
            self.gap_since = None;
            return Ok(());
        };
        self.catch_up(io, Some(upto), inflight).await?;
        self.held.clear();
        self.gap_since = None;
        if self.last < upto {
            tracing::warn!(
                last = self.last,
                upto,
                "stream gap could not be filled; closing so the client resyncs"
            );
            return Err(Stop::Close(close::INTERNAL, "stream gap; reconnect"));
        }
        Ok(())
    }

    /// Sends stream entries after `self.last`, up to `upto` (or the head).
    async fn catch_up(
        &mut self,
        io: &mut Io,
        upto: Option<u64>,
        inflight: &mut Replies,
    ) -> Result<(), Stop> {
        loop {
            let want = upto.map_or(CATCH_UP_PAGE, |u| {
                (u.saturating_sub(self.last) as usize).min(CATCH_UP_PAGE)
            });
            if want == 0 {
                break;
            }
            let entries = match self
                .app
                .store
                .stream_after(self.session.user_id, self.last, want)
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "catch-up read failed");
                    return Err(Stop::Close(close::INTERNAL, "store unavailable; reconnect"));
                }
            };
            let n = entries.len();
            self.send_entries(io, entries, inflight).await?;
            if n < want {
                break;
            }
        }
        Ok(())
    }

    /// Sends stream entries read from the store (those already sent are skipped). They go
    /// through [`Conn::write_out`], which keeps the pending sends moving while a slow client
    /// holds up the write.
    async fn send_entries(
        &mut self,
        io: &mut Io,
        entries: Vec<StreamEntry>,
        inflight: &mut Replies,
    ) -> Result<(), Stop> {
        self.queue_entries(entries);
        self.write_out(io, inflight).await
    }

    /// Queues stream entries for the next write (those already sent are skipped).
    fn queue_entries(&mut self, entries: Vec<StreamEntry>) {
        for entry in entries {
            if entry.pos <= self.last {
                continue;
            }
            let text = confab_protocol::message_frame_json(&entry.message, entry.pos);
            self.queue_at(text, entry.pos);
        }
    }
}

fn transport_error(e: axum::Error) -> Stop {
    // axum wraps tungstenite's error; a capacity error means the frame was over the limit.
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("Capacity")
    {
        Stop::Close(close::TOO_BIG, "message too big")
    } else {
        tracing::debug!(error = %e, "socket read failed");
        Stop::Gone
    }
}

/// Runs a frame's store work in its own task and returns a handle to its reply.
///
/// The work must not depend on the socket task being polled: that task may wait on a slow
/// client's socket, and a store transaction paused mid-way would hold its row locks (in
/// PostgreSQL) for every other node. Once a `send` is read it also completes, stored and
/// published, even if the socket closes meanwhile; the client's retry with the same
/// `client_id` then finds it.
fn detached(work: impl Future<Output = Option<ServerFrame>> + Send + 'static) -> Pending {
    let task = tokio::spawn(work);
    Box::pin(async move {
        task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a frame's task failed");
            Some(ServerFrame::error(
                ErrorCode::Internal,
                "internal error",
                None,
            ))
        })
    })
}

/// Messaging steps 3-5: id from the sequencer, durable append, hand-off to the sync queue.
async fn send_message(
    app: Arc<App>,
    from: Id,
    to: Id,
    client_id: String,
    body: String,
) -> Option<ServerFrame> {
    let started = std::time::Instant::now();
    let reference = Some(client_id.clone());
    if let Err(e) = app.can_accept_sends() {
        return Some(e.to_frame(reference));
    }
    let new = NewMessage {
        id: Id(app.sequencer.next_id()),
        from,
        to,
        client_id: client_id.clone(),
        body,
        ts: now_ms(),
    };
    let appended = match app.store.append(new).await {
        Ok(a) => a,
        Err(e) => return Some(Error::from(e).to_frame(reference)),
    };
    let m = &appended.message;
    let sent = ServerFrame::Sent {
        client_id,
        id: m.id,
        conversation: m.conversation.clone(),
        seq: m.seq,
        ts: m.ts,
    };
    if !appended.duplicate {
        app.metrics.messages_stored.inc();
        let event = SyncEvent::Message {
            message: appended.message.clone(),
            positions: [
                (m.from, appended.sender_pos),
                (m.to, appended.recipient_pos),
            ],
        };
        if let Err(e) = app.sync.publish(event).await {
            // Stored is stored: devices get it at their next catch-up.
            tracing::warn!(error = %e, "sync publish failed; recipients will catch up");
        }
    }
    app.metrics
        .send_latency
        .observe(started.elapsed().as_secs_f64());
    Some(sent)
}

/// A `read` frame: advance the read mark; the peer and the reader's other devices hear of it.
async fn mark_read(
    app: Arc<App>,
    session: DeviceSession,
    conversation: String,
    seq: u64,
) -> Option<ServerFrame> {
    let advance = match app
        .store
        .mark_read(session.user_id, &conversation, seq)
        .await
    {
        Ok(Some(a)) => a,
        Ok(None) => return None, // not forward: ignored, as PROTOCOL.md says
        Err(e) => return Some(Error::from(e).to_frame(None)),
    };
    let event = SyncEvent::Ephemeral {
        to: vec![advance.peer, session.user_id],
        except_device: Some(session.device_id),
        frame: Arc::new(ServerFrame::Receipt {
            conversation,
            user_id: session.user_id,
            kind: ReceiptKind::Read,
            seq: advance.seq,
        }),
    };
    if let Err(e) = app.sync.publish(event).await {
        tracing::warn!(error = %e, "read receipt publish failed; peers see it in the conversation list");
    }
    None
}

/// A `typing` frame: relayed to the peer's connected sockets unless a block stands either
/// way. Never stored; silently dropped for an offline or unknown peer, so it reveals nothing.
async fn relay_typing(app: Arc<App>, from: Id, to: Id) -> Option<ServerFrame> {
    if app.hub.sockets_of(to) == 0 && matches!(app.config.queue, crate::config::QueueConfig::Memory)
    {
        return None; // single node: nobody to tell, skip the block lookup
    }
    match app.store.blocked_between(from, to).await {
        Ok(false) => {}
        Ok(true) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "typing dropped: block check failed");
            return None;
        }
    }
    let event = SyncEvent::Ephemeral {
        to: vec![to],
        except_device: None,
        frame: Arc::new(ServerFrame::Typing {
            from,
            conversation: crate::store::conversation_id(from, to),
        }),
    };
    let _ = app.sync.publish(event).await;
    None
}

/// Writes a socket's acknowledged cursor (starting with the channel's first value),
/// coalescing acks that arrive during a write, and sends `delivered` receipts for the
/// conversations whose delivered mark moved. Ends when the sender is dropped, after writing
/// the last value.
async fn ack_writer(app: Arc<App>, session: DeviceSession, mut acks: watch::Receiver<u64>) {
    let mut first = true;
    while std::mem::take(&mut first) || acks.changed().await.is_ok() {
        let pos = *acks.borrow_and_update();
        let advances = match app.store.set_cursor(session.device_id, pos).await {
            Ok(a) => {
                let mut pending = app.pending_acks.lock().unwrap_or_else(|e| e.into_inner());
                if pending.get(&session.device_id).is_some_and(|p| *p <= pos) {
                    pending.remove(&session.device_id);
                }
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, "storing a cursor failed");
                continue;
            }
        };
        for a in advances {
            let event = SyncEvent::Ephemeral {
                to: vec![a.peer],
                except_device: None,
                frame: Arc::new(ServerFrame::Receipt {
                    conversation: a.conversation,
                    user_id: session.user_id,
                    kind: ReceiptKind::Delivered,
                    seq: a.seq,
                }),
            };
            if let Err(e) = app.sync.publish(event).await {
                tracing::warn!(error = %e, "delivered receipt publish failed");
            }
        }
    }
}
