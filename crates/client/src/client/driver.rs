//! The background task: owns the socket, runs it until it is lost, and writes what is due.

use std::collections::BTreeMap;
use std::time::Duration;

use confab_protocol::{ClientFrame, ServerFrame};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use super::channel::{Command, Item};
use super::config::ClientConfig;
use super::dedupe::Dedupe;
use super::event::Event;
use super::pending::{PendingSend, PendingSends};
use crate::connection::Connection;
use crate::error::{Error, ErrorKind};

/// Automatic acks are coalesced: at most one per this interval (plus one right after `synced`).
const ACK_INTERVAL: Duration = Duration::from_millis(50);

/// Why a connection's serve loop ended.
pub(super) enum Flow {
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
pub(super) struct Driver {
    pub(super) config: ClientConfig,
    pub(super) url: String,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Item>,
    /// Cursor of the last item queued for the app: where a reconnect resumes.
    pub(super) resume_cursor: Option<String>,
    pub(super) dedupe: Dedupe,
    pub(super) sends: PendingSends,
    ack_pending: Option<String>,
    ack_due: Instant,
    ack_last: Option<Instant>,
    /// Latest `read` per conversation not yet written.
    reads: BTreeMap<String, u64>,
    /// Ephemeral frames (typing) for the current socket only.
    outbox: Vec<ClientFrame>,
    pub(super) stopping: bool,
    close_waiters: Vec<oneshot::Sender<()>>,
    /// Why the client stopped, if not by request: pending sends fail with it.
    pub(super) fatal: Option<Error>,
}

impl Driver {
    pub(super) fn new(
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

    pub(super) async fn run(mut self, first: Connection) {
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

    pub(super) fn on_command(&mut self, command: Command) {
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
                let (to, conversation) = to.fields();
                self.sends.insert(PendingSend {
                    frame: ClientFrame::Send {
                        to,
                        conversation,
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
            Command::Typing { to } => {
                let (to, conversation) = to.fields();
                self.outbox.push(ClientFrame::Typing { to, conversation });
            }
            Command::Close { done } => {
                self.stopping = true;
                self.close_waiters.push(done);
            }
        }
    }

    pub(super) fn emit(&self, item: Item) {
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
