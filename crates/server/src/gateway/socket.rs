//! A socket past admission: its state ([`Conn`]), its start (`welcome`, presence, catch-up,
//! `synced`), the live loop, and how it ends.

use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use confab_protocol::{ClientFrame, ErrorCode, Id, MessageFrame, ServerFrame};
use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::group_acks::GroupAckWriter;
use super::handshake::{Handshake, handshake};
use super::hub::{CloseReason, Outbound, Registration};
use super::io::{End, Io, Stop, text_frame, transport_error};
use super::order::{GroupPlaces, Order};
use super::queue::{QueueReceiver, TryRecvError};
use super::{CATCH_UP_PAGE, Gateway, close};
use crate::store::{DeviceSession, LoginState};

/// Ready events and replies a socket gathers into one write after the one it woke for.
const COALESCE: usize = 64;

/// Work a frame started that answers later (a store write): the frame to send, if any.
pub(super) type Pending = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send>>;

/// A socket's place under the connection cap, released on drop. It doubles as the socket's
/// handle on the gateway: one pointer fewer in every socket's task.
pub(super) struct Slot(pub(super) Arc<Gateway>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.admission.release();
    }
}

/// A socket's task, from the upgrade to its end.
pub(super) async fn run_task(
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

/// One socket, from `hello` to its end. Returns the close to send, if the server ends it.
///
/// The login and the logout are boxed: this future is the socket task's for its whole life,
/// and it holds space for its largest await, so only the live loop's state should be inline.
async fn run(gateway: &Arc<Gateway>, io: &mut Io, header_token: Option<Box<str>>) -> End {
    let Handshake {
        session,
        start_pos,
        token_hash,
        registration,
        login,
    } = match Box::pin(handshake(gateway, io, header_token)).await {
        Ok(done) => done,
        Err(end) => return end,
    };
    let Registration {
        membership,
        mut events,
        mut close,
    } = registration;
    let mut conn = Conn {
        gateway: gateway.clone(),
        session,
        socket: membership.socket,
        token_hash,
        order: Order::new(start_pos),
        acked: start_pos,
        acks: None,
        out: Vec::new(),
        work: None,
        groups: None,
        group_acks: None,
    };
    // A debug span: an enabled span costs every socket ~200 bytes of formatted fields, a
    // twentieth of an idle socket's budget; `RUST_LOG=debug` brings the context back.
    let span = tracing::debug_span!("socket", user = %conn.session.user_id, device = %conn.session.device_id, socket = conn.socket);
    gateway.metrics.connections.inc();
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
    gateway.metrics.connections.dec();
    Box::pin(conn.end()).await;
    drop(membership);
    match result {
        Ok(()) | Err(Stop::Gone) => None,
        Err(Stop::Close(code, reason)) => Some((code, reason)),
    }
}

/// A socket past the handshake.
pub(super) struct Conn {
    pub(super) gateway: Arc<Gateway>,
    pub(super) session: DeviceSession,
    /// Cluster-unique id of this socket (for presence).
    pub(super) socket: u64,
    /// The hash of the token the socket authenticated with, to re-check it on resync.
    pub(super) token_hash: [u8; 32],
    /// The positions sent and the live events held for a gap.
    pub(super) order: Order<Arc<MessageFrame>>,
    /// Highest position this socket acknowledged.
    pub(super) acked: u64,
    /// Hands acks to this socket's ack task, which writes them to the store. Started at the
    /// first ack that moves the cursor: an idle socket pays for neither.
    pub(super) acks: Option<(watch::Sender<u64>, tokio::task::JoinHandle<()>)>,
    /// Frames queued for the socket loop's next write.
    pub(super) out: Vec<WsMessage>,
    /// Store work the loop does after its next write.
    pub(super) work: Option<Work>,
    /// Where the socket stands in each group (boxed: a socket of a user in no group keeps a
    /// pointer, not a map).
    pub(super) groups: Option<Box<GroupPlaces>>,
    /// Writes this socket's group acks; started at the first.
    pub(super) group_acks: Option<Box<GroupAckWriter>>,
}

/// Store work a socket loop does between writes (it reads the store, so it is not done
/// inside an event handler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Work {
    /// Read the stream up to the highest held event.
    FillGap,
    /// Re-check the token and read whatever the store has after the last sent position.
    Resync,
}

/// Work a socket's frames started (store writes, relays) whose replies are pending. The set
/// is made at the first such frame: a socket that never sends does without it.
///
/// Sends that the socket polls itself (see `Conn::start_send`) are polled while it waits to
/// write, too, so a slow client does not hold back its own messages; and the ones still
/// pending when the socket ends are finished by a task of their own.
#[derive(Default)]
pub(super) struct Replies(Option<FuturesUnordered<Pending>>);

impl Replies {
    pub(super) fn push(&mut self, work: Pending) {
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

impl Conn {
    /// After the socket's end: the last ack is written, and the socket is marked gone; if it
    /// was the user's last, `last_seen` is stored and friends are told.
    pub(super) async fn end(&mut self) {
        // Dropping the sender lets the ack task write the last ack and stop.
        if let Some((sender, task)) = self.acks.take() {
            drop(sender);
            let _ = task.await;
        }
        if let Some(writer) = self.group_acks.take() {
            writer.finish().await;
        }
        let (chat, user) = (&self.gateway.chat, self.session.user_id);
        chat.went_offline(user, self.socket).await;
    }

    /// `welcome`, presence, the catch-up (its first page read with the login state) and
    /// `synced`.
    pub(super) async fn start(&mut self, io: &mut Io, login: Box<LoginState>) -> Result<(), Stop> {
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
        self.catch_up_groups(io, &mut none_pending).await?;
        // `welcome`, presence, the first page and `synced` in one write where they fit: a
        // write less per connect for both sides.
        self.queue(&ServerFrame::Synced {
            cursor: self.order.last().to_string(),
        });
        self.write_out(io, &mut none_pending).await?;
        // Most sockets are idle from here on: they keep no queue.
        self.out = Vec::new();
        Ok(())
    }

    /// Login steps 2-4 (`chat::went_online`), then this socket hears which friends are
    /// online now.
    async fn go_online(&mut self, io: &mut Io, friends: &[Id]) -> Result<(), Stop> {
        let online = (self.gateway.chat)
            .went_online(
                self.session.user_id,
                self.session.device_id,
                self.socket,
                friends,
            )
            .await;
        for (friend, p) in online {
            let frame = ServerFrame::Presence {
                user_id: friend,
                status: p.status,
                last_seen: p.last_seen,
            };
            io.feed(&frame).await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    /// The live loop: client frames, hub events, replies of started work, pings.
    pub(super) async fn serve(
        &mut self,
        io: &mut Io,
        events: &mut QueueReceiver<Outbound>,
        close_rx: &mut oneshot::Receiver<CloseReason>,
    ) -> Result<(), Stop> {
        let gateway = self.gateway.clone();
        let cfg = &gateway.config;
        // Shared with the device's other sockets on this node: limits are per device. Taken
        // at the first text frame: a socket that only listens holds none.
        let (mut limits, device) = (None, self.session.device_id);
        let mut inflight = Replies::default();
        let mut heard = Instant::now();
        // One timer serves both the ping and the gap wait: each costs a timer entry that an
        // idle socket would hold all its life.
        let mut next_ping = Instant::now() + cfg.ping_interval;
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);

        loop {
            let due = match self.order.gap_deadline() {
                Some(gap) => next_ping.min(gap),
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
                            let limits = limits.get_or_insert_with(|| gateway.limiters.acquire(device));
                            if !limits.frames.take() {
                                gateway.metrics.rate_limited.with_label_values(&["frame"]).inc();
                                // Only on this refusal path is the frame parsed, for its `ref`.
                                let reference = match ClientFrame::parse(&text) {
                                    Ok(ClientFrame::Send { client_id, .. }) => Some(client_id),
                                    _ => None,
                                };
                                self.queue(&ServerFrame::error(ErrorCode::RateLimited, "too many frames; slow down", reference));
                            } else if let Some(reply) = self.handle(&text, limits, &mut inflight) {
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
                    if self.order.gap_deadline().is_some_and(|gap| now >= gap) {
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
    pub(super) fn want(&mut self, work: Work) {
        if work == Work::Resync || self.work.is_none() {
            self.work = Some(work);
        }
    }

    /// Queues a frame for the loop's next write.
    pub(super) fn queue(&mut self, frame: &ServerFrame) {
        self.out.push(text_frame(frame));
    }

    /// Writes the queued frames in one go. Polled by hand rather than through `feed` and
    /// `flush` futures: this future's state is part of every socket's task for its life.
    /// Replies that finish meanwhile go out in the same write.
    pub(super) async fn write_out(
        &mut self,
        io: &mut Io,
        inflight: &mut Replies,
    ) -> Result<(), Stop> {
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
    pub(super) fn on_event(&mut self, event: Option<Outbound>) -> Result<(), Stop> {
        match event {
            Some(Outbound::Message { frame, pos }) => self.deliver(frame, pos),
            Some(Outbound::Group(event)) => self.deliver_group(&event),
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
}

/// Runs a frame's store work in its own task and returns a handle to its reply.
///
/// The work must not depend on the socket task being polled: that task may wait on a slow
/// client's socket, and a store transaction paused mid-way would hold its row locks (in
/// PostgreSQL) for every other node. Once a `send` is read it also completes, stored and
/// published, even if the socket closes meanwhile; the client's retry with the same
/// `client_id` then finds it.
pub(super) fn detached(
    work: impl Future<Output = Option<ServerFrame>> + Send + 'static,
) -> Pending {
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
