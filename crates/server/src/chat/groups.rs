//! The flows of group conversations: create, change, send, read, type, acknowledge. Each
//! stored message (a text or a `system` one) goes to the sync queue with its recipients, the
//! members at its `seq`; the hub of each node hands it to those members' sockets.

use std::sync::Arc;

use confab_protocol::{Id, MAX_TITLE_CHARS, ReceiptKind, ServerFrame, group_conversation_id};

use super::Chat;
use crate::config::GroupBounds;
use crate::error::{Error, Result};
use crate::store::groups::{
    ChangeGroup, GroupAppended, GroupChange, GroupRecord, NewGroup, NewGroupMessage,
};
use crate::store::{DeviceSession, StoreResult};
use crate::sync::SyncEvent;
use crate::time::now_ms;

/// A title: 1-128 characters, not blank.
pub fn check_title(title: &str) -> Result<()> {
    let n = title.chars().count();
    if title.trim().is_empty() || n > MAX_TITLE_CHARS {
        return Err(Error::bad_request(format!(
            "title must be 1-{MAX_TITLE_CHARS} characters, not blank"
        )));
    }
    Ok(())
}

impl Chat {
    /// Hands a group's stored message to the sync queue. A failed publish loses nothing:
    /// each recipient's devices read it at their next catch-up or resync.
    async fn publish_group(&self, appended: &GroupAppended) {
        if appended.duplicate {
            return;
        }
        self.metrics.messages_stored.inc();
        let event = SyncEvent::GroupMessage {
            message: appended.message.clone(),
            recipients: appended.recipients.clone(),
        };
        if let Err(e) = self.sync.publish(event).await {
            tracing::warn!(error = %e, "group message publish failed; devices catch up from the store");
        }
    }

    /// Creates a group of `creator` and `members` within `bounds`, with its `created` event at
    /// seq 1, and tells every member.
    pub async fn create_group(
        &self,
        creator: Id,
        title: String,
        members: Vec<Id>,
        bounds: GroupBounds,
    ) -> Result<GroupRecord> {
        check_title(&title)?;
        self.sync_reachable()?;
        let new = NewGroup {
            group: self.ids.next_id()?,
            message_id: self.ids.next_id()?,
            creator,
            title,
            members,
            now: now_ms(),
            max_members: bounds.max_members,
            max_groups: bounds.max_groups,
        };
        let (record, created) = self.store.create_group(new).await?;
        self.publish_group(&created).await;
        Ok(record)
    }

    /// A member changes the group; every `system` message it stored goes to its recipients.
    pub async fn change_group(
        &self,
        actor: Id,
        group: Id,
        change: GroupChange,
        bounds: GroupBounds,
    ) -> Result<()> {
        if let GroupChange::Rename(title) = &change {
            check_title(title)?;
        }
        self.sync_reachable()?;
        let change = ChangeGroup {
            group,
            actor,
            change,
            message_ids: [self.ids.next_id()?, self.ids.next_id()?],
            now: now_ms(),
            max_members: bounds.max_members,
            max_groups: bounds.max_groups,
        };
        for stored in self.store.change_group(change).await? {
            self.publish_group(&stored).await;
        }
        Ok(())
    }

    /// The group object, for a member.
    pub async fn group(&self, viewer: Id, group: Id) -> Result<GroupRecord> {
        self.store
            .group(viewer, group)
            .await?
            .ok_or_else(|| Error::not_found("no such group"))
    }

    /// A `send` into a group: as [`Chat::send_message`], to every member's devices.
    pub async fn send_group_message(
        &self,
        from: Id,
        group: Id,
        client_id: String,
        body: String,
    ) -> Result<ServerFrame> {
        let started = std::time::Instant::now();
        self.sync_reachable()?;
        let appended = self
            .store
            .append_group(NewGroupMessage {
                id: self.ids.next_id()?,
                group,
                from,
                client_id: client_id.clone(),
                body,
                ts: now_ms(),
            })
            .await?;
        if appended.notify {
            self.push_wake.notify_one();
        }
        self.publish_group(&appended).await;
        let m = &appended.message;
        self.metrics
            .send_latency
            .observe(started.elapsed().as_secs_f64());
        Ok(ServerFrame::Sent {
            client_id,
            id: m.id,
            conversation: m.conversation.clone(),
            seq: m.seq,
            ts: m.ts,
        })
    }

    /// A `read` in a group: the reader's mark moves; only the reader's other devices hear of
    /// it (members see each other's marks at `GET …/receipts`).
    pub(super) async fn mark_group_read(
        &self,
        reader: DeviceSession,
        group: Id,
        seq: u64,
    ) -> Result<()> {
        let Some(seq) = self
            .store
            .mark_group_read(reader.user_id, group, seq)
            .await?
        else {
            return Ok(());
        };
        let conversation = group_conversation_id(group);
        self.clear_notifications(reader, &conversation, seq).await;
        let event = SyncEvent::Ephemeral {
            to: vec![reader.user_id],
            except_device: Some(reader.device_id),
            frame: Arc::new(ServerFrame::Receipt {
                conversation,
                user_id: reader.user_id,
                kind: ReceiptKind::Read,
                seq,
            }),
        };
        if let Err(e) = self.sync.publish(event).await {
            tracing::warn!(error = %e, "read receipt publish failed");
        }
        Ok(())
    }

    /// A `typing` in a group: relayed to the other members' sockets, whoever they are
    /// (membership, not friendship, decides; presence itself stays friends-only). Dropped
    /// silently for a non-member.
    pub async fn relay_group_typing(&self, from: Id, group: Id) {
        let record = match self.store.group(from, group).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "typing dropped: membership check failed");
                return;
            }
        };
        let to: Vec<Id> = record
            .members
            .iter()
            .map(|m| m.user_id)
            .filter(|m| *m != from && (!self.sync_is_node_local || self.local.holds(*m)))
            .collect();
        if to.is_empty() {
            return;
        }
        let event = SyncEvent::Ephemeral {
            to,
            except_device: None,
            frame: Arc::new(ServerFrame::Typing {
                from,
                conversation: group_conversation_id(group),
            }),
        };
        let _ = self.sync.publish(event).await;
    }

    /// A device acknowledged a group up to `seq`.
    pub async fn record_group_ack(
        &self,
        device: DeviceSession,
        group: Id,
        seq: u64,
    ) -> StoreResult<()> {
        self.store
            .set_group_mark(device.device_id, device.user_id, group, seq)
            .await
    }
}
