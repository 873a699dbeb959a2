//! A socket's client frames: checked, rate-limited, and handed to the design's flows
//! ([`crate::chat`]); their replies come back through the socket's pending work.

use std::sync::Arc;

use confab_protocol::{
    ClientFrame, Cursor, Destination, ErrorCode, Id, MAX_BODY_BYTES, MAX_CLIENT_ID_CHARS,
    ServerFrame, group_of,
};
use tokio::sync::watch;

use super::Gateway;
use super::handshake::malformed_cursor;
use super::limits::{DeviceLimits, TYPING_EVERY};
use super::socket::{Conn, Replies, detached};
use crate::error::Error;
use crate::store::{DeviceSession, side_of};

/// Where a `send` or a `typing` goes, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// A user: the 1:1 conversation with them.
    User(Id),
    /// A group, by its id.
    Group(Id),
}

impl Conn {
    /// Handles one client text frame; returns an immediate reply, if any.
    pub(super) fn handle(
        &mut self,
        text: &str,
        limits: &DeviceLimits,
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
                conversation,
                client_id,
                body,
            } => {
                let reference = Some(client_id.clone());
                let target = match self.target_of(to, conversation.as_deref()) {
                    Ok(target) => target,
                    Err(e) => return Some(e.to_frame(reference)),
                };
                if let Err(e) = self.check_send(target, &client_id, &body) {
                    return Some(e.to_frame(reference));
                }
                if !limits.sends.take() {
                    self.gateway
                        .metrics
                        .rate_limited
                        .with_label_values(&["send"])
                        .inc();
                    return Some(
                        Error::rate_limited(
                            "send rate exceeded; retry later with the same client_id",
                        )
                        .to_frame(reference),
                    );
                }
                self.start_send(inflight, target, client_id, body);
                None
            }
            ClientFrame::Read { conversation, seq } => {
                let (chat, reader) = (self.gateway.chat.clone(), self.session);
                inflight.push(detached(async move {
                    let read = chat.mark_read(reader, conversation, seq).await;
                    read.err().map(|e| e.to_frame(None))
                }));
                None
            }
            ClientFrame::Typing { to, conversation } => {
                match self.target_of(to, conversation.as_deref()) {
                    Ok(target) => self.typing(target, limits, inflight),
                    // Typing into a conversation the user is not in is dropped like typing
                    // to a stranger; only a frame naming no destination, or two, is an error.
                    Err(e) if e.code() == ErrorCode::BadRequest => return Some(e.to_frame(None)),
                    Err(_) => {}
                }
                None
            }
            ClientFrame::Ack { cursor } => match Cursor::parse(&cursor) {
                Some(Cursor::Stream(pos)) => {
                    self.ack(pos);
                    None
                }
                Some(Cursor::Group(at)) => {
                    self.ack(at.pos);
                    self.ack_group(at.group, at.seq);
                    None
                }
                None => Some(ServerFrame::error(
                    ErrorCode::BadRequest,
                    malformed_cursor(),
                    None,
                )),
            },
        }
    }

    /// Where a `send` or `typing` goes: `to` itself, the peer of the 1:1 conversation named,
    /// or the group named. A 1:1 conversation the user is not in is `not_found`, as one that
    /// does not exist; a group's membership is the store's to check.
    fn target_of(&self, to: Option<Id>, conversation: Option<&str>) -> Result<Target, Error> {
        match Destination::of(to, conversation).map_err(Error::bad_request)? {
            Destination::User(user) => Ok(Target::User(user)),
            Destination::Conversation(c) => match group_of(c) {
                Some(group) => Ok(Target::Group(group)),
                None => side_of(c, self.session.user_id)
                    .map(|side| Target::User(side.peer))
                    .ok_or_else(|| Error::not_found("no such conversation")),
            },
        }
    }

    fn check_send(&self, target: Target, client_id: &str, body: &str) -> Result<(), Error> {
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
        if target == Target::User(self.session.user_id) {
            return Err(Error::bad_request("cannot send a message to yourself"));
        }
        Ok(())
    }

    /// Starts a `send`. Where the store's appends need no polling to go on (the wiring says
    /// so: SQLite runs them on its writer thread) the socket polls the send itself; elsewhere
    /// it gets its own task. A task per message (spawn, join handle, two wake-ups) cost the
    /// embedded server a sixth of its peak rate (docs/benchmarks/history.md).
    fn start_send(&self, inflight: &mut Replies, target: Target, client_id: String, body: String) {
        let (chat, from) = (self.gateway.chat.clone(), self.session.user_id);
        let work = async move {
            let reference = client_id.clone();
            let sent = match target {
                Target::User(to) => chat.send_message(from, to, client_id, body).await,
                Target::Group(group) => chat.send_group_message(from, group, client_id, body).await,
            };
            Some(sent.unwrap_or_else(|e| e.to_frame(Some(reference))))
        };
        if self.gateway.sends_polled_by_socket {
            inflight.push(Box::pin(work));
        } else {
            inflight.push(detached(work));
        }
    }

    /// A `typing` to `to`: relayed at most once a second per peer per device, however many
    /// sockets the device sends it on, on however many nodes (the cluster's claim is asked
    /// only once this node's own check has passed; if it cannot be asked, the relay goes).
    fn typing(&mut self, target: Target, limits: &DeviceLimits, inflight: &mut Replies) {
        // A group's and a user's ids never coincide (one sequencer makes both): the typing
        // limit keys both by id.
        let key = match target {
            Target::User(to) => to,
            Target::Group(group) => group,
        };
        if key != self.session.user_id && limits.typing_due(key) {
            let (gateway, from, device) = (
                self.gateway.clone(),
                self.session.user_id,
                self.session.device_id,
            );
            inflight.push(detached(async move {
                if let Some(shared) = &gateway.cluster_limits {
                    match shared.claim_typing(device, key, TYPING_EVERY).await {
                        Ok(true) => {}
                        Ok(false) => return None,
                        Err(e) => tracing::debug!(error = %e, "claiming a typing relay failed"),
                    }
                }
                match target {
                    Target::User(to) => gateway.chat.relay_typing(from, to).await,
                    Target::Group(group) => gateway.chat.relay_group_typing(from, group).await,
                }
                None
            }));
        }
    }

    /// An `ack` of `pos`: counted at once (for a reconnect to this node), and written by
    /// the socket's ack task, started at the first ack that moves the cursor.
    fn ack(&mut self, pos: u64) {
        // A socket can only acknowledge what it was sent.
        let pos = pos.min(self.order.last());
        self.gateway.ack_received(self.session.device_id, pos);
        if pos > self.acked {
            self.acked = pos;
            match &self.acks {
                Some((sender, _)) => {
                    sender.send_replace(pos);
                }
                None => {
                    let (sender, receiver) = watch::channel(pos);
                    let task =
                        tokio::spawn(ack_writer(self.gateway.clone(), self.session, receiver));
                    self.acks = Some((sender, task));
                }
            }
        }
    }
}

/// Writes a socket's acknowledged cursor (starting with the channel's first value),
/// coalescing acks that arrive during a write (`chat::record_ack` also sends the `delivered`
/// receipts). Ends when the sender is dropped, after writing the last value.
async fn ack_writer(gateway: Arc<Gateway>, device: DeviceSession, mut acks: watch::Receiver<u64>) {
    let mut first = true;
    while std::mem::take(&mut first) || acks.changed().await.is_ok() {
        let pos = *acks.borrow_and_update();
        match gateway.chat.record_ack(device, pos).await {
            Ok(()) => gateway.ack_stored(device.device_id, pos),
            Err(e) => tracing::warn!(error = %e, "storing a cursor failed"),
        }
    }
}
