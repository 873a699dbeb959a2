//! A socket's delivery order: the rule "a queue may reorder or lose events; delivery never
//! skips or repeats them", as a plain type with no I/O.
//!
//! Every event for a socket carries its position in the user's stream. [`Order`] remembers
//! the highest position sent. A live event at or below it was already sent (by the catch-up
//! or a gap fill) and is dropped; the next position is sent at once; one further ahead is
//! held, because the missing ones are usually a moment behind (two publishers raced). If
//! they do not come within the wait, or too many events are held, the socket reads the gap
//! from the store ([`Order::gap_upto`]) and sends it through [`Order::read`].

use std::collections::BTreeMap;
use std::time::Duration;

use confab_protocol::Id;
use tokio::time::Instant;

/// How long a live event ahead of a missing position waits for it before the gap is read
/// from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(25);
/// Live events held for a gap at most; more, and the gap is read from the store at once.
pub const MAX_HELD: usize = 256;

/// What became of a live event offered to [`Order::offer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// At or below the last position sent: already sent, dropped.
    Duplicate,
    /// Sent, with every held event it made contiguous.
    Sent,
    /// Ahead of a missing position: held until the gap is filled.
    Held,
    /// Held, and the holding is full: read the gap from the store now.
    Full,
}

/// The positions sent to one socket and the live events waiting for a gap.
pub struct Order<T> {
    /// Highest stream position sent.
    last: u64,
    /// Live events that arrived ahead of a missing position, by position.
    held: BTreeMap<u64, T>,
    /// Since when `held` has been waiting for a missing position.
    gap_since: Option<Instant>,
}

impl<T> Order<T> {
    /// A socket that has sent everything up to `last` (its resume position).
    pub fn new(last: u64) -> Self {
        Order {
            last,
            held: BTreeMap::new(),
            gap_since: None,
        }
    }

    /// The highest position sent.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A live event at `pos`. `send` is called for each event that goes out now, in
    /// position order: this one and the held ones it makes contiguous. `now` is asked only
    /// when a gap starts: the clock is not read for every event.
    pub fn offer(
        &mut self,
        pos: u64,
        event: T,
        now: impl FnOnce() -> Instant,
        mut send: impl FnMut(u64, T),
    ) -> Offered {
        if pos <= self.last {
            return Offered::Duplicate;
        }
        if pos > self.last + 1 {
            self.held.insert(pos, event);
            self.gap_since.get_or_insert_with(now);
            return if self.held.len() >= MAX_HELD {
                Offered::Full
            } else {
                Offered::Held
            };
        }
        send(pos, event);
        self.last = pos;
        while let Some(entry) = self.held.first_entry() {
            let next = *entry.key();
            if next <= self.last {
                entry.remove();
            } else if next == self.last + 1 {
                send(next, entry.remove());
                self.last = next;
            } else {
                break;
            }
        }
        if self.held.is_empty() {
            self.gap_since = None;
        }
        Offered::Sent
    }

    /// An entry read from the store at `pos`: true if it is to be sent (it is new), and it
    /// then counts as sent.
    pub fn read(&mut self, pos: u64) -> bool {
        if pos <= self.last {
            return false;
        }
        self.last = pos;
        true
    }

    /// When the held events stop waiting and the gap is read from the store; `None` while
    /// nothing is held.
    pub fn gap_deadline(&self) -> Option<Instant> {
        self.gap_since.map(|since| since + GAP_WAIT)
    }

    /// The highest held position: a gap fill reads the store up to it. `None` while nothing
    /// is held.
    pub fn gap_upto(&self) -> Option<u64> {
        self.held.keys().next_back().copied()
    }

    /// After a gap fill: the held events were all read from the store (or could not be), so
    /// they are dropped.
    pub fn clear_held(&mut self) {
        self.held.clear();
        self.gap_since = None;
    }

    /// After a read of the store: the held events it covered are dropped; the rest wait on.
    pub fn drop_sent_held(&mut self) {
        let last = self.last;
        self.held.retain(|pos, _| *pos > last);
        if self.held.is_empty() {
            self.gap_since = None;
        }
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// What a socket knows of its groups, made at the first group it meets: per group the last
/// `seq` sent (the order of a group's messages, see `gateway::groups`) and the highest
/// acknowledged on this socket.
#[derive(Debug, Default)]
pub struct GroupPlaces {
    pub(super) sent: std::collections::HashMap<Id, u64>,
    pub(super) acked: std::collections::HashMap<Id, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offers `pos` and returns what was sent.
    fn offer(order: &mut Order<u64>, pos: u64) -> (Offered, Vec<u64>) {
        let mut sent = Vec::new();
        let offered = order.offer(pos, pos, Instant::now, |p, e| {
            assert_eq!(p, e, "an event goes out with its own position");
            sent.push(p);
        });
        (offered, sent)
    }

    #[test]
    fn the_next_position_goes_out_at_once() {
        let mut order = Order::new(4);
        assert_eq!(offer(&mut order, 5), (Offered::Sent, vec![5]));
        assert_eq!(offer(&mut order, 6), (Offered::Sent, vec![6]));
        assert_eq!(order.last(), 6);
        assert_eq!(order.gap_deadline(), None);
    }

    #[test]
    fn a_duplicate_is_dropped() {
        let mut order = Order::new(0);
        offer(&mut order, 1);
        assert_eq!(offer(&mut order, 1), (Offered::Duplicate, vec![]));
        assert_eq!(offer(&mut order, 0), (Offered::Duplicate, vec![]));
        // What the catch-up already sent is a duplicate when it arrives live.
        assert!(order.read(2));
        assert!(!order.read(2));
        assert_eq!(offer(&mut order, 2), (Offered::Duplicate, vec![]));
        assert_eq!(order.last(), 2);
    }

    #[test]
    fn a_gap_holds_later_events_until_it_is_filled_in_order() {
        let mut order = Order::new(0);
        assert_eq!(offer(&mut order, 3), (Offered::Held, vec![]));
        assert_eq!(offer(&mut order, 2), (Offered::Held, vec![]));
        assert_eq!(order.held(), 2);
        assert!(order.gap_deadline().is_some());
        // The missing one arrives: it and the held ones go out, in order, nothing twice.
        assert_eq!(offer(&mut order, 1), (Offered::Sent, vec![1, 2, 3]));
        assert_eq!(order.held(), 0);
        assert_eq!(order.gap_deadline(), None);
        assert_eq!(offer(&mut order, 3), (Offered::Duplicate, vec![]));
    }

    #[test]
    fn a_release_stops_at_the_next_gap() {
        let mut order = Order::new(0);
        offer(&mut order, 2);
        offer(&mut order, 5);
        assert_eq!(offer(&mut order, 1), (Offered::Sent, vec![1, 2]));
        assert_eq!(order.held(), 1);
        assert!(order.gap_deadline().is_some(), "5 still waits for 3 and 4");
        assert_eq!(order.gap_upto(), Some(5));
    }

    #[test]
    fn the_gap_wait_starts_at_the_first_held_event() {
        let mut order = Order::new(0);
        let t0 = Instant::now();
        order.offer(3, 3, || t0, |_, _| {});
        order.offer(4, 4, || t0 + Duration::from_millis(10), |_, _| {});
        assert_eq!(order.gap_deadline(), Some(t0 + GAP_WAIT));
    }

    #[test]
    fn a_timed_out_gap_is_read_from_the_store_and_the_held_events_are_dropped() {
        let mut order = Order::new(0);
        offer(&mut order, 3);
        offer(&mut order, 4);
        let upto = order.gap_upto().unwrap();
        assert_eq!(upto, 4);
        // The store had 1-4: each is sent once.
        let read: Vec<u64> = (1..=upto).filter(|p| order.read(*p)).collect();
        assert_eq!(read, vec![1, 2, 3, 4]);
        order.clear_held();
        assert_eq!(order.held(), 0);
        assert_eq!(order.gap_deadline(), None);
        assert_eq!(offer(&mut order, 4), (Offered::Duplicate, vec![]));
        assert_eq!(offer(&mut order, 5), (Offered::Sent, vec![5]));
    }

    #[test]
    fn a_read_drops_the_held_events_it_covered_and_keeps_the_rest() {
        let mut order = Order::new(0);
        offer(&mut order, 2);
        offer(&mut order, 9);
        assert!(order.read(1));
        assert!(order.read(2));
        order.drop_sent_held();
        assert_eq!(order.held(), 1, "9 waits on");
        assert!(order.gap_deadline().is_some());
        for p in 3..=9 {
            assert!(order.read(p));
        }
        order.drop_sent_held();
        assert_eq!(order.held(), 0);
        assert_eq!(order.gap_deadline(), None);
    }

    #[test]
    fn too_many_held_events_ask_for_the_gap_at_once() {
        let mut order = Order::new(0);
        for pos in 2..(MAX_HELD as u64 + 1) {
            assert_eq!(offer(&mut order, pos).0, Offered::Held);
        }
        assert_eq!(offer(&mut order, MAX_HELD as u64 + 1).0, Offered::Full);
        assert_eq!(order.held(), MAX_HELD);
    }
}
