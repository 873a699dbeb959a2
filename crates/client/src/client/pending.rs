//! Sends waiting for the server's `sent`, kept in order so they can be resent after a drop.

use std::collections::{BTreeMap, HashMap};

use confab_protocol::ClientFrame;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::event::Sent;
use crate::error::Error;

/// A send waiting for `sent`.
pub(super) struct PendingSend {
    pub(super) frame: ClientFrame,
    pub(super) client_id: String,
    /// Everyone waiting: a second `send_with_id` of a pending `client_id` joins the first.
    pub(super) waiters: Vec<oneshot::Sender<Result<Sent, Error>>>,
    /// When to (re)write the frame: now for a new send or after a reconnect, the attempt's
    /// timeout once written, the end of the backoff after `rate_limited`/`unavailable`.
    pub(super) due: Instant,
    /// Written on the current socket and waiting for an answer.
    pub(super) in_flight: bool,
    /// Retryable errors so far, for the backoff.
    pub(super) retries: u32,
}

impl PendingSend {
    pub(super) fn abandoned(&self) -> bool {
        self.waiters.iter().all(|w| w.is_closed())
    }

    pub(super) fn finish(self, result: &Result<Sent, Error>) {
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
pub(super) struct PendingSends {
    pub(super) by_order: BTreeMap<u64, PendingSend>,
    by_client_id: HashMap<String, u64>,
    next_order: u64,
}

impl PendingSends {
    pub(super) fn get_mut(&mut self, client_id: &str) -> Option<&mut PendingSend> {
        let order = self.by_client_id.get(client_id)?;
        self.by_order.get_mut(order)
    }

    pub(super) fn insert(&mut self, send: PendingSend) {
        let order = self.next_order;
        self.next_order += 1;
        self.by_client_id.insert(send.client_id.clone(), order);
        self.by_order.insert(order, send);
    }

    pub(super) fn remove(&mut self, client_id: &str) -> Option<PendingSend> {
        let order = self.by_client_id.remove(client_id)?;
        self.by_order.remove(&order)
    }

    pub(super) fn remove_order(&mut self, order: u64) -> Option<PendingSend> {
        let send = self.by_order.remove(&order)?;
        self.by_client_id.remove(&send.client_id);
        Some(send)
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = PendingSend> {
        self.by_client_id.clear();
        std::mem::take(&mut self.by_order).into_values()
    }
}
