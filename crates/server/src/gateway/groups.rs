//! A socket's group messages: ordered by `seq` per group, caught up from the device's mark in
//! each group, and acknowledged per group.
//!
//! Group messages have no place in the account's stream (the message-store guide, "Group
//! conversations: the layout"), so a socket keeps, per group, the last `seq` it sent. A live
//! message right after it goes out at once; an older one is dropped; one further ahead, or
//! one of a group the socket has no place in yet (it was added meanwhile), is read from the
//! store instead by a resync, which reads every group after the socket's place. The cursor
//! of a group message names the socket's place in the stream too (`POS.GROUP.SEQ`), so that a
//! client that keeps one cursor resumes the stream with it.

use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use confab_protocol::{GroupCursor, Id, Message, MessageFrame};

use super::group_acks::GroupAckWriter;
use super::hub::GroupEvent;
use super::io::{Io, Stop};
use super::order::GroupPlaces;
use super::socket::{Conn, Replies, Work};
use super::{CATCH_UP_PAGE, close};

impl Conn {
    fn places(&mut self) -> &mut GroupPlaces {
        self.groups.get_or_insert_with(Box::default)
    }

    /// A live group message: sent if it is the next of its group, dropped if already sent,
    /// else read from the store with the rest (a resync).
    pub(super) fn deliver_group(&mut self, event: &GroupEvent) {
        let last = self.places().sent.get(&event.group).copied();
        match last {
            Some(last) if event.seq <= last => {}
            Some(last) if event.seq == last + 1 => {
                self.push_group_frame(&event.frame, event.group, event.seq);
            }
            _ => self.want(Work::Resync),
        }
    }

    fn push_group_frame(&mut self, frame: &MessageFrame, group: Id, seq: u64) {
        let cursor = GroupCursor {
            pos: self.order.last(),
            group,
            seq,
        };
        let text = frame.with_cursor_text(&cursor.to_string());
        self.out.push(WsMessage::Text(Utf8Bytes::from(text)));
        self.places().sent.insert(group, seq);
    }

    fn queue_group_messages(&mut self, group: Id, messages: &[Message]) {
        for m in messages {
            if self
                .places()
                .sent
                .get(&group)
                .is_none_or(|last| m.seq > *last)
            {
                self.push_group_frame(&MessageFrame::new(m), group, m.seq);
            }
        }
    }

    /// Sends, group by group, what the store has after the device's mark and after what this
    /// socket sent; records every group the user is in as a place for live messages.
    pub(super) async fn catch_up_groups(
        &mut self,
        io: &mut Io,
        inflight: &mut Replies,
    ) -> Result<(), Stop> {
        let (store, session) = (self.gateway.store.clone(), self.session);
        let unavailable = |e| {
            tracing::warn!(error = %e, "group catch-up read failed");
            Stop::Close(close::INTERNAL, "store unavailable; reconnect")
        };
        let spans = store
            .group_spans(session.device_id, session.user_id)
            .await
            .map_err(unavailable)?;
        for span in spans {
            let sent = self.places().sent.get(&span.group).copied();
            let mut after = span.after.max(sent.unwrap_or(0));
            if span.upto.is_none() && sent.is_none() {
                // The place live messages continue from.
                self.places().sent.insert(span.group, after);
            }
            loop {
                let page = store
                    .group_messages(span.group, after, span.upto, CATCH_UP_PAGE)
                    .await
                    .map_err(unavailable)?;
                self.queue_group_messages(span.group, &page);
                self.write_out(io, inflight).await?;
                match page.last() {
                    Some(m) if page.len() == CATCH_UP_PAGE => after = m.seq,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// An `ack` of a group message: the group's mark moves (written, coalesced, by the
    /// socket's group ack task), if this socket sent that message.
    pub(super) fn ack_group(&mut self, group: Id, seq: u64) {
        let places = self.places();
        let Some(&sent) = places.sent.get(&group) else {
            return;
        };
        let seq = seq.min(sent);
        if places.acked.get(&group).is_some_and(|a| *a >= seq) {
            return;
        }
        places.acked.insert(group, seq);
        let (chat, session) = (&self.gateway.chat, self.session);
        self.group_acks
            .get_or_insert_with(|| Box::new(GroupAckWriter::start(chat.clone(), session)))
            .ack(group, seq);
    }
}
