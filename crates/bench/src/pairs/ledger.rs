//! What a worker of `pairs` keeps of its messages: each send's state, and which of the
//! partner's sends each socket received.

use confab_client::{Id, Message};

use super::read::{ACKED, Ledger, SendState};
use super::{RunCtx, WorkerResult};
use crate::body;
use crate::schedule::Schedule;

/// The pairs of a worker: its sockets are users `first_user..`, partners `i` and `i ^ 1`.
pub(super) struct PairsLedger {
    users: Vec<Id>,
    first_user: usize,
    /// sent[i][seq]: socket i's own sends.
    sent: Vec<Vec<SendState>>,
    /// received[i][seq]: the sends of i's partner (socket i ^ 1) that i read.
    received: Vec<Vec<bool>>,
    /// Acked but not yet received by the partner.
    pending: u64,
    /// The server echoes each message to its sender's devices too. The run waits for those
    /// echoes as well, so that the cursor acked at the end covers them and the next run on
    /// these accounts does not get them replayed.
    echoes: u64,
}

impl PairsLedger {
    pub(super) fn new(users: Vec<Id>, first_user: usize, schedule: &Schedule) -> PairsLedger {
        let n = users.len();
        PairsLedger {
            sent: (0..n)
                .map(|i| vec![0; schedule.count_for(first_user + i)])
                .collect(),
            received: (0..n)
                .map(|i| vec![false; schedule.count_for(first_user + (i ^ 1))])
                .collect(),
            users,
            first_user,
            pending: 0,
            echoes: 0,
        }
    }
}

impl Ledger for PairsLedger {
    fn send_state(&mut self, i: usize, seq: u32) -> Option<&mut SendState> {
        self.sent[i].get_mut(seq as usize)
    }

    fn schedule_sender(&self, i: usize) -> usize {
        self.first_user + i
    }

    fn first_ack(&mut self, i: usize, seq: u32) {
        if !self.received[i ^ 1][seq as usize] {
            self.pending += 1;
        }
    }

    fn message(&mut self, i: usize, message: &Message, ctx: &RunCtx, r: &mut WorkerResult) {
        if message.from == self.users[i] {
            if body::decode(&message.body).is_some_and(|s| s.run == ctx.run) {
                self.echoes += 1;
            }
            return;
        }
        let stamp = body::decode(&message.body)
            .filter(|s| s.run == ctx.run && message.from == self.users[i ^ 1]);
        let Some(stamp) = stamp else {
            r.foreign += 1;
            return;
        };
        let seq = stamp.seq as usize;
        let Some(seen) = self.received[i].get_mut(seq) else {
            r.foreign += 1;
            return;
        };
        if *seen {
            r.duplicates += 1;
            return;
        }
        *seen = true;
        if self.sent[i ^ 1][seq] & ACKED != 0 {
            self.pending -= 1;
        }
        r.delivery(ctx, &stamp);
    }

    fn drained(&self, r: &WorkerResult) -> bool {
        self.pending == 0 && self.echoes >= r.acked
    }

    fn finish(self, r: &mut WorkerResult) {
        for (i, sent) in self.sent.iter().enumerate() {
            for (seq, st) in sent.iter().enumerate() {
                if st & ACKED != 0 && !self.received[i ^ 1][seq] {
                    r.undelivered += 1;
                }
            }
        }
    }
}
