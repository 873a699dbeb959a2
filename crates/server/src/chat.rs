//! The design's flows, as plain async functions over the backends' traits: what happens when a
//! message is sent, read, acknowledged or typed, when a user comes and goes, when two users
//! become friends and when a device is revoked. No HTTP or WebSocket type appears here; the
//! gateway and the API parse requests and frames, call these, and answer.
//!
//! The messaging flow (design steps 3-5): [`Chat::send_message`] takes an id from the
//! sequencer, appends to the store, and publishes to the sync queue, which carries the event
//! to the sockets of both participants (steps 6-8, in `gateway::hub`).

pub mod groups;

use std::sync::Arc;

use confab_protocol::{Id, Presence, PresenceStatus, ReceiptKind, ServerFrame};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::presence::{self, PresenceService};
use crate::sequencer::IdSource;
use crate::store::{DeviceSession, MessageStore, NewMessage, StoreResult};
use crate::sync::{SyncEvent, SyncQueue};
use crate::time::now_ms;

/// This node's sockets, as the flows see them (the gateway's hub is the one implementation).
pub trait LocalSockets: Send + Sync {
    /// Hands an event to the sockets of this node it concerns, without the sync queue.
    fn deliver(&self, event: SyncEvent);
    /// Whether this node holds a socket of `user`.
    fn holds(&self, user: Id) -> bool;
}

/// The handles the flows work with, and what the wiring knows about them.
pub struct Chat {
    store: Arc<dyn MessageStore>,
    sync: Arc<dyn SyncQueue>,
    presence: Arc<dyn PresenceService>,
    ids: Arc<IdSource>,
    local: Arc<dyn LocalSockets>,
    metrics: Metrics,
    /// Rung when an intent to notify was stored: the push server looks at its outbox then
    /// rather than at its next poll.
    push_wake: Arc<tokio::sync::Notify>,
    /// The sync queue reaches this node's sockets only (a single node): an ephemeral event
    /// for a user with no socket here would reach nobody, so it need not be made.
    sync_is_node_local: bool,
}

impl Chat {
    /// The flows over these handles. `sync_is_node_local` is the wiring's knowledge of the
    /// queue: true when it delivers within this process only.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per handle the flows hold; the wiring is the only caller"
    )]
    pub fn new(
        store: Arc<dyn MessageStore>,
        sync: Arc<dyn SyncQueue>,
        presence: Arc<dyn PresenceService>,
        ids: Arc<IdSource>,
        local: Arc<dyn LocalSockets>,
        metrics: Metrics,
        push_wake: Arc<tokio::sync::Notify>,
        sync_is_node_local: bool,
    ) -> Self {
        Chat {
            store,
            sync,
            presence,
            ids,
            local,
            metrics,
            push_wake,
            sync_is_node_local,
        }
    }

    /// Messaging steps 3-5: an id from the sequencer, the durable append, the hand-off to the
    /// sync queue. Answers the `sent` frame (the first message's, for a repeated
    /// `client_id`).
    ///
    /// A node refuses new sends (`unavailable`) while its sync queue is down, so nothing is
    /// stored that the other nodes would not hear about, and while its node-id lease is lost,
    /// so two nodes never make the same id.
    pub async fn send_message(
        &self,
        from: Id,
        to: Id,
        client_id: String,
        body: String,
    ) -> Result<ServerFrame> {
        let started = std::time::Instant::now();
        self.sync_reachable()?;
        let new = NewMessage {
            id: self.ids.next_id()?,
            from,
            to,
            client_id: client_id.clone(),
            body,
            ts: now_ms(),
        };
        let appended = self.store.append(new).await?;
        let m = &appended.message;
        let sent = ServerFrame::Sent {
            client_id,
            id: m.id,
            conversation: m.conversation.clone(),
            seq: m.seq,
            ts: m.ts,
        };
        if appended.notify {
            self.push_wake.notify_one();
        }
        if !appended.duplicate {
            self.metrics.messages_stored.inc();
            let event = SyncEvent::Message {
                positions: [(m.from, appended.sender_pos), (to, appended.recipient_pos)],
                message: appended.message,
            };
            if let Err(e) = self.sync.publish(event).await {
                // Stored is stored: devices get it at their next catch-up.
                tracing::warn!(error = %e, "sync publish failed; recipients will catch up");
            }
        }
        self.metrics
            .send_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(sent)
    }

    /// Refuses a write (`unavailable`) while the sync queue is down: nothing is stored that the
    /// other nodes would not hear about.
    fn sync_reachable(&self) -> Result<()> {
        if self.sync.available() {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the message sync queue is unreachable".into(),
            ))
        }
    }

    /// A `read`: advances the reader's mark; the reader's other devices hear of it, and the
    /// peer too while the two are friends (a stranger learns nothing of when one reads). A
    /// mark that does not move forward is ignored, as PROTOCOL.md says.
    pub async fn mark_read(
        &self,
        reader: DeviceSession,
        conversation: String,
        seq: u64,
    ) -> Result<()> {
        if let Some(group) = confab_protocol::group_of(&conversation) {
            return self.mark_group_read(reader, group, seq).await;
        }
        let Some(advance) = self
            .store
            .mark_read(reader.user_id, &conversation, seq)
            .await?
        else {
            return Ok(());
        };
        self.clear_notifications(reader, &conversation, advance.seq)
            .await;
        let to = if advance.friends {
            vec![advance.peer, reader.user_id]
        } else {
            vec![reader.user_id]
        };
        let event = SyncEvent::Ephemeral {
            to,
            except_device: Some(reader.device_id),
            frame: Arc::new(ServerFrame::Receipt {
                conversation,
                user_id: reader.user_id,
                kind: ReceiptKind::Read,
                seq: advance.seq,
            }),
        };
        if let Err(e) = self.sync.publish(event).await {
            tracing::warn!(error = %e, "read receipt publish failed; peers see it in the conversation list");
        }
        Ok(())
    }

    /// The design's push server, after a read: the reader's other devices clear their
    /// notification of the conversation. The read is stored already; a failure here leaves
    /// a notification shown, so it is logged, not answered.
    async fn clear_notifications(&self, reader: DeviceSession, conversation: &str, seq: u64) {
        match self
            .store
            .record_read(
                reader.user_id,
                reader.device_id,
                conversation,
                seq,
                now_ms(),
            )
            .await
        {
            Ok(()) => self.push_wake.notify_one(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record a read for push; notifications stay")
            }
        }
    }

    /// A `typing`: relayed to the peer's connected sockets only while the two are friends
    /// (mutual contacts, no block either way): a stranger learns nothing of presence through
    /// it. Never stored; silently dropped for an offline, unknown or non-friend peer alike, so
    /// the sender cannot tell which.
    pub async fn relay_typing(&self, from: Id, to: Id) {
        if self.sync_is_node_local && !self.local.holds(to) {
            return; // nobody to tell: skip the friendship lookup
        }
        match self.store.are_friends(from, to).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "typing dropped: friendship check failed");
                return;
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
        let _ = self.sync.publish(event).await;
    }

    /// A device acknowledged its stream up to `pos`: the cursor is stored, and the senders of
    /// the conversations whose delivered mark moved get a `delivered` receipt if they are
    /// friends (the store answers that with the advance: no read of its own per ack).
    pub async fn record_ack(&self, device: DeviceSession, pos: u64) -> StoreResult<()> {
        let advances = self.store.set_cursor(device.device_id, pos).await?;
        for a in advances.into_iter().filter(|a| a.friends) {
            let event = SyncEvent::Ephemeral {
                to: vec![a.peer],
                except_device: None,
                frame: Arc::new(ServerFrame::Receipt {
                    conversation: a.conversation,
                    user_id: device.user_id,
                    kind: ReceiptKind::Delivered,
                    seq: a.seq,
                }),
            };
            if let Err(e) = self.sync.publish(event).await {
                tracing::warn!(error = %e, "delivered receipt publish failed");
            }
        }
        Ok(())
    }

    /// Login steps 2-4: the socket is online; if the user just came online its friends are
    /// told. Returns the friends who are online now, for the socket. `friends` were read at
    /// login: one read serves both the announcement and the socket's list.
    pub async fn went_online(
        &self,
        user: Id,
        device: Id,
        socket: u64,
        friends: &[Id],
    ) -> Vec<(Id, Presence)> {
        let now = now_ms();
        match self.presence.connected(user, device, socket, now).await {
            Ok(true) => {
                // `last_seen` is persisted when the user goes offline; while online the
                // presence service holds it, so connecting costs no store write.
                let online = Presence {
                    status: PresenceStatus::Online,
                    last_seen: now,
                };
                presence::notify(&*self.sync, &*self.presence, friends, user, online).await;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed"),
        }
        let statuses = self.presence.status(friends).await.unwrap_or_default();
        friends
            .iter()
            .copied()
            .zip(statuses)
            .filter(|(_, p)| p.status == PresenceStatus::Online)
            .collect()
    }

    /// A socket ended; if it was the user's last, `last_seen` is stored and friends are told.
    pub async fn went_offline(&self, user: Id, socket: u64) {
        let now = now_ms();
        match self.presence.disconnected(user, socket, now).await {
            Ok(true) => self.announce_offline(user, now).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "presence update failed"),
        }
    }

    /// `user` went offline at `last_seen` (its last socket closed, or its node died and the
    /// presence sweep expired it): stored, and its friends are told.
    pub async fn announce_offline(&self, user: Id, last_seen: i64) {
        if let Err(e) = self.store.set_last_seen(user, last_seen).await {
            tracing::warn!(error = %e, "storing last_seen failed");
        }
        let offline = Presence {
            status: PresenceStatus::Offline,
            last_seen,
        };
        presence::notify_friends(&*self.store, &*self.sync, &*self.presence, user, offline).await;
    }

    /// Two users just became friends (again): each online one is announced to the other at
    /// once.
    pub async fn became_friends(&self, a: Id, b: Id) {
        let Ok(statuses) = self.presence.status(&[a, b]).await else {
            return;
        };
        for (who, to, p) in [(a, b, statuses[0]), (b, a, statuses[1])] {
            if p.status == PresenceStatus::Online {
                let event = SyncEvent::Ephemeral {
                    to: vec![to],
                    except_device: None,
                    frame: Arc::new(ServerFrame::Presence {
                        user_id: who,
                        status: p.status,
                        last_seen: p.last_seen,
                    }),
                };
                let _ = self.sync.publish(event).await;
            }
        }
    }

    /// Logs a device out: its token is revoked in the store and its open sockets close.
    pub async fn revoke_device(&self, user: Id, device: Id) -> Result<()> {
        self.store.revoke_device(device, now_ms()).await?;
        self.announce_revoked(user, device).await;
        Ok(())
    }

    /// Gives `user` a new password hash and logs out every other device of the account
    /// (their sockets close); `keep_device`, the one that asked, stays logged in.
    pub async fn change_password(
        &self,
        user: Id,
        password_hash: &str,
        keep_device: Id,
    ) -> Result<()> {
        let revoked = self
            .store
            .set_password(user, password_hash, keep_device, now_ms())
            .await?;
        for device in revoked {
            self.announce_revoked(user, device).await;
        }
        Ok(())
    }

    /// Closes the open sockets of a device whose token the store has revoked, on every node.
    async fn announce_revoked(&self, user: Id, device: Id) {
        let event = SyncEvent::DeviceRevoked { user, device };
        // This node's sockets close at once, whatever the queue does; other nodes hear it
        // through the queue, or at their next resync if the queue is down.
        self.local.deliver(event.clone());
        if let Err(e) = self.sync.publish(event).await {
            // The token is revoked in the store; open sockets notice at their next reconnect.
            tracing::warn!(error = %e, "could not broadcast a revocation");
        }
    }
}

#[cfg(test)]
mod tests;
