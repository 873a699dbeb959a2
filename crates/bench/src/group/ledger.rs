//! What a worker of `group` keeps of its messages: each send's state, and how many of the
//! group's online devices have read it.

use confab_client::Message;

use crate::body;
use crate::pairs::{Ledger, RunCtx, SendState, WorkerResult};
use crate::schedule::Schedule;

/// The groups of a worker: its sockets are the online members of groups `first_group..`,
/// group by group, `online` each, so socket `i` reads group `i / online`.
pub(super) struct GroupLedger {
    online: usize,
    first_group: usize,
    /// The worker's groups' conversation ids.
    conversations: Vec<String>,
    /// sent[g][k]: the state of group g's k-th send.
    sent: Vec<Vec<SendState>>,
    /// received[g][k]: the online devices that have read it (at most 1,024 per group
    /// by default: two bytes each).
    received: Vec<Vec<u16>>,
    /// The highest group `seq` each socket has read: the server delivers a group's
    /// messages in `seq` order, so anything at or below it is a repeat.
    last_seq: Vec<u64>,
    /// Deliveries still owed for acked sends.
    pending: u64,
}

impl GroupLedger {
    pub(super) fn new(
        conversations: Vec<String>,
        first_group: usize,
        online: usize,
        schedule: &Schedule,
    ) -> GroupLedger {
        let count = |g: usize| schedule.count_for(first_group + g);
        GroupLedger {
            online,
            first_group,
            sent: (0..conversations.len())
                .map(|g| vec![0; count(g)])
                .collect(),
            received: (0..conversations.len())
                .map(|g| vec![0; count(g)])
                .collect(),
            last_seq: vec![0; conversations.len() * online],
            conversations,
            pending: 0,
        }
    }
}

impl Ledger for GroupLedger {
    fn send_state(&mut self, i: usize, seq: u32) -> Option<&mut SendState> {
        // A group's k-th send is written by its online member k mod N.
        if seq as usize % self.online != i % self.online {
            return None;
        }
        self.sent[i / self.online].get_mut(seq as usize)
    }

    fn schedule_sender(&self, i: usize) -> usize {
        self.first_group + i / self.online
    }

    fn first_ack(&mut self, i: usize, seq: u32) {
        let got = self.received[i / self.online][seq as usize];
        self.pending += (self.online - usize::from(got)) as u64;
    }

    fn message(&mut self, i: usize, message: &Message, ctx: &RunCtx, r: &mut WorkerResult) {
        let g = i / self.online;
        let stamp = body::decode(&message.body)
            .filter(|s| s.run == ctx.run && message.conversation == self.conversations[g]);
        let Some(stamp) = stamp else {
            r.foreign += 1;
            return;
        };
        let Some(got) = self.received[g].get_mut(stamp.seq as usize) else {
            r.foreign += 1;
            return;
        };
        if message.seq <= self.last_seq[i] {
            r.duplicates += 1;
            return;
        }
        self.last_seq[i] = message.seq;
        *got += 1;
        if self.sent[g][stamp.seq as usize] & crate::pairs::ACKED != 0 {
            self.pending -= 1;
        }
        r.delivery(ctx, &stamp);
    }

    fn drained(&self, _: &WorkerResult) -> bool {
        self.pending == 0
    }

    fn finish(self, r: &mut WorkerResult) {
        r.undelivered += self.pending;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_group_send_is_its_members_in_turn() {
        // 2 groups of 3 online members; 12 sends, 6 per group, 2 per member.
        let schedule = Schedule::new(12.0, Duration::from_secs(1), 2);
        let mut l = GroupLedger::new(vec!["g1".into(), "g2".into()], 0, 3, &schedule);
        assert!(l.send_state(0, 0).is_some());
        assert!(l.send_state(1, 1).is_some());
        assert!(l.send_state(0, 1).is_none(), "send 1 is member 1's");
        assert!(l.send_state(4, 4).is_some(), "group 1's member 1");
        assert!(l.send_state(4, 6).is_none(), "beyond the schedule");
        assert_eq!(l.schedule_sender(4), 1);
        *l.send_state(0, 0).unwrap() |= crate::pairs::ACKED;
        l.first_ack(0, 0);
        assert_eq!(l.pending, 3, "every online member owes a delivery");
        assert!(!l.drained(&WorkerResult::default()));
    }
}
