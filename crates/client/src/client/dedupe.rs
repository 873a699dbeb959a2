//! Dropping repeated messages, by id and by per-conversation `seq`.

use std::collections::{HashMap, HashSet, VecDeque};

use confab_protocol::{Id, Message};

/// How many recent message ids the dedupe remembers.
const RECENT_IDS: usize = 10_000;

/// Remembers what the app has seen so at-least-once delivery becomes exactly-once for it.
#[derive(Default)]
pub(super) struct Dedupe {
    recent: HashSet<Id>,
    order: VecDeque<Id>,
    /// Per conversation, the highest `seq` delivered: the server delivers each conversation in
    /// `seq` order, so anything at or below it is a repeat even after its id was forgotten.
    high_seq: HashMap<String, u64>,
}

impl Dedupe {
    /// Records `message`; false if it was delivered before.
    pub(super) fn first_time(&mut self, message: &Message) -> bool {
        let high = self.high_seq.get(&message.conversation).copied();
        if self.recent.contains(&message.id) || high.is_some_and(|h| message.seq <= h) {
            return false;
        }
        self.high_seq
            .insert(message.conversation.clone(), message.seq);
        self.recent.insert(message.id);
        self.order.push_back(message.id);
        let excess = self.order.len().saturating_sub(RECENT_IDS);
        for old in self.order.drain(..excess) {
            self.recent.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, conversation: &str, seq: u64) -> Message {
        Message {
            id: Id(id),
            conversation: conversation.into(),
            seq,
            from: Id(1),
            to: Some(Id(2)),
            body: "x".into(),
            system: None,
            ts: 0,
        }
    }

    #[test]
    fn dedupe_by_id_and_by_seq() {
        let mut d = Dedupe::default();
        assert!(d.first_time(&message(10, "a", 1)));
        assert!(!d.first_time(&message(10, "a", 1)));
        assert!(d.first_time(&message(11, "a", 2)));
        // Lower seq in the same conversation: a repeat even with an unseen id.
        assert!(!d.first_time(&message(99, "a", 2)));
        assert!(d.first_time(&message(12, "b", 1)));
    }

    #[test]
    fn dedupe_forgets_old_ids_but_not_seqs() {
        let mut d = Dedupe::default();
        for i in 0..(RECENT_IDS as u64 + 5) {
            assert!(d.first_time(&message(i, &format!("c{i}"), 1)));
        }
        assert_eq!(d.recent.len(), RECENT_IDS);
        assert!(!d.recent.contains(&Id(0)));
        assert!(!d.first_time(&message(0, "c0", 1)));
    }
}
