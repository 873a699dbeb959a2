//! What a worker of `push` keeps of its senders' messages: each send's state, and the id the
//! server gave it, read from the echo every message makes to its sender's own socket. The
//! recipients have no socket: what reaches them is the receiver's to count.

use std::sync::{Arc, Mutex, PoisonError};

use confab_client::{Id, Message};

use crate::body;
use crate::pairs::{ACKED, Ledger, RunCtx, SendState, WorkerResult};
use crate::schedule::Schedule;

/// One sender's sends, as a worker hands them over at the end of a phase.
pub(super) struct SenderLog {
    /// The schedule's sender.
    pub(super) sender: usize,
    /// states[seq]: the state of its send `seq`.
    pub(super) states: Vec<SendState>,
    /// ids[seq]: the id the server gave it (from the echo), if it came back.
    pub(super) ids: Vec<Option<Id>>,
}

impl SenderLog {
    /// Whether its send `seq` was answered with `sent`.
    pub(super) fn acked(&self, seq: usize) -> bool {
        self.states.get(seq).is_some_and(|s| s & ACKED != 0)
    }
}

/// Where the workers leave their [`SenderLog`]s.
pub(super) type Logs = Arc<Mutex<Vec<SenderLog>>>;

/// The senders of a worker: its sockets are senders `first..`, one each.
pub(super) struct PushLedger {
    first: usize,
    users: Vec<Id>,
    sent: Vec<Vec<SendState>>,
    ids: Vec<Vec<Option<Id>>>,
    echoes: u64,
    out: Logs,
}

impl PushLedger {
    pub(super) fn new(users: Vec<Id>, first: usize, schedule: &Schedule, out: Logs) -> PushLedger {
        let counts: Vec<usize> = (0..users.len())
            .map(|i| schedule.count_for(first + i))
            .collect();
        PushLedger {
            first,
            sent: counts.iter().map(|&n| vec![0; n]).collect(),
            ids: counts.iter().map(|&n| vec![None; n]).collect(),
            users,
            echoes: 0,
            out,
        }
    }
}

impl Ledger for PushLedger {
    fn send_state(&mut self, i: usize, seq: u32) -> Option<&mut SendState> {
        self.sent[i].get_mut(seq as usize)
    }

    fn schedule_sender(&self, i: usize) -> usize {
        self.first + i
    }

    fn first_ack(&mut self, _: usize, _: u32) {}

    fn message(&mut self, i: usize, message: &Message, ctx: &RunCtx, r: &mut WorkerResult) {
        let stamp = body::decode(&message.body)
            .filter(|s| s.run == ctx.run && message.from == self.users[i]);
        let Some(slot) = stamp.and_then(|s| self.ids[i].get_mut(s.seq as usize)) else {
            r.foreign += 1;
            return;
        };
        if slot.is_some() {
            r.duplicates += 1;
            return;
        }
        *slot = Some(message.id);
        self.echoes += 1;
    }

    /// Every acked send has come back as its echo, so the cursor acked at the end covers
    /// them and a later run on these accounts does not get them replayed.
    fn drained(&self, r: &WorkerResult) -> bool {
        self.echoes >= r.acked
    }

    fn finish(self, _: &mut WorkerResult) {
        let logs = self
            .sent
            .into_iter()
            .zip(self.ids)
            .enumerate()
            .map(|(i, (states, ids))| SenderLog {
                sender: self.first + i,
                states,
                ids,
            });
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(logs);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_sender_log_says_what_was_acked() {
        let schedule = Schedule::new(10.0, Duration::from_secs(1), 4);
        let out = Logs::default();
        let mut l = PushLedger::new(vec![Id(5), Id(6)], 2, &schedule, out.clone());
        assert_eq!(l.schedule_sender(1), 3);
        *l.send_state(1, 0).unwrap() |= ACKED;
        assert!(l.send_state(1, 5).is_none(), "beyond the schedule");
        assert!(l.drained(&WorkerResult::default()));
        l.finish(&mut WorkerResult::default());
        let logs = out.lock().unwrap();
        assert_eq!(logs.len(), 2);
        assert_eq!((logs[0].sender, logs[1].sender), (2, 3));
        assert!(logs[1].acked(0) && !logs[0].acked(0) && !logs[1].acked(9));
        assert_eq!(
            logs[0].states.len(),
            2,
            "senders 0-1 send 3 of the 10, 2-3 send 2"
        );
    }
}
