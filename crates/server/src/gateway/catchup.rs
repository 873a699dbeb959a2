//! Delivery in stream order: live events through the socket's [`super::order::Order`], and
//! reads of the
//! store after the last position sent (catch-up, gap fills, the periodic resync).

use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use confab_protocol::MessageFrame;
use tokio::time::Instant;

use super::io::{Io, Stop};
use super::order::Offered;
use super::socket::{Conn, Replies, Work};
use super::{CATCH_UP_PAGE, close};
use crate::store::StreamEntry;

impl Conn {
    /// Sends a live event in stream order ([`super::order::Order::offer`]): one ahead of the next expected
    /// position is held briefly, and if the missing ones do not come (the queue lost one),
    /// the gap is read from the store; so the queue can reorder or lose events without the
    /// client seeing it.
    pub(super) fn deliver(&mut self, message: Arc<MessageFrame>, pos: u64) {
        let out = &mut self.out;
        let offered = self
            .order
            .offer(pos, message, Instant::now, |pos, message| {
                out.push(WsMessage::Text(Utf8Bytes::from(message.with_cursor(pos))));
            });
        if offered == Offered::Full {
            self.want(Work::FillGap);
        }
    }

    /// Periodic repair in a cluster: closes the socket if its token was revoked (or expired)
    /// meanwhile, and sends whatever the store has after the last position sent, and in each
    /// group after the last `seq` sent. A group message that arrives out of order asks for
    /// one too (see `gateway::groups`).
    pub(super) async fn resync(&mut self, io: &mut Io, inflight: &mut Replies) -> Result<(), Stop> {
        match self.gateway.sessions.check(self.token_hash).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Stop::Close(close::POLICY, "token revoked")),
            Err(_) => return Ok(()), // store trouble: try again next time
        }
        self.catch_up(io, None, inflight).await?;
        self.order.drop_sent_held();
        self.catch_up_groups(io, inflight).await
    }

    /// Reads from the store everything up to the highest held event, then drops the held ones.
    pub(super) async fn fill_gap(
        &mut self,
        io: &mut Io,
        inflight: &mut Replies,
    ) -> Result<(), Stop> {
        let Some(upto) = self.order.gap_upto() else {
            self.order.clear_held();
            return Ok(());
        };
        self.catch_up(io, Some(upto), inflight).await?;
        self.order.clear_held();
        let last = self.order.last();
        if last < upto {
            tracing::warn!(
                last,
                upto,
                "stream gap could not be filled; closing so the client resyncs"
            );
            return Err(Stop::Close(close::INTERNAL, "stream gap; reconnect"));
        }
        Ok(())
    }

    /// Sends stream entries after the last position sent, up to `upto` (or the head).
    pub(super) async fn catch_up(
        &mut self,
        io: &mut Io,
        upto: Option<u64>,
        inflight: &mut Replies,
    ) -> Result<(), Stop> {
        loop {
            let last = self.order.last();
            let want = upto.map_or(CATCH_UP_PAGE, |u| {
                usize::try_from(u.saturating_sub(last))
                    .map_or(CATCH_UP_PAGE, |n| n.min(CATCH_UP_PAGE))
            });
            if want == 0 {
                break;
            }
            let entries = match self
                .gateway
                .store
                .stream_after(self.session.user_id, last, want)
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
    pub(super) fn queue_entries(&mut self, entries: Vec<StreamEntry>) {
        for entry in entries {
            if self.order.read(entry.pos) {
                let text = confab_protocol::message_frame_json(&entry.message, entry.pos);
                self.out.push(WsMessage::Text(Utf8Bytes::from(text)));
            }
        }
    }
}
