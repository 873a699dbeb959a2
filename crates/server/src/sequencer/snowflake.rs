//! Snowflake ids: unique, roughly time-ordered 64-bit ids for one node id.
//!
//! Layout, most significant first:
//! 41 bits of milliseconds since [`EPOCH_MS`] (good until 2094), 10 bits of node id, 12 bits of
//! a per-millisecond counter. Two nodes never share a node id (the configuration, or in a
//! cluster a lease, guarantees it), so ids are unique across the cluster.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-01-01T00:00:00Z: ids stay small and the 41-bit clock lasts until 2094.
pub const EPOCH_MS: u64 = 1_704_067_200_000;
pub const NODE_BITS: u32 = 10;
pub const COUNTER_BITS: u32 = 12;
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
const MAX_COUNTER: u64 = (1 << COUNTER_BITS) - 1;

/// Source of milliseconds since the Unix epoch; a trait so tests can step the clock backwards.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .unwrap_or(0)
    }
}

/// Hands out ids for one node.
pub struct Sequencer {
    /// The node id, in the low bits; changes only when a lost lease is replaced.
    node: std::sync::atomic::AtomicU64,
    clock: Box<dyn Clock>,
    state: Mutex<State>,
}

struct State {
    /// The millisecond the last id was made in. Never decreases, even if the clock does.
    last_ms: u64,
    counter: u64,
}

impl Sequencer {
    pub fn new(node: u16) -> Self {
        Self::with_clock(node, Box::new(SystemClock))
    }

    /// # Panics
    /// If `node` does not fit in [`NODE_BITS`] bits: that is a configuration bug.
    pub fn with_clock(node: u16, clock: Box<dyn Clock>) -> Self {
        assert!(node <= MAX_NODE, "sequencer node id {node} > {MAX_NODE}");
        Sequencer {
            node: std::sync::atomic::AtomicU64::new(u64::from(node)),
            clock,
            state: Mutex::new(State {
                last_ms: 0,
                counter: 0,
            }),
        }
    }

    pub fn node(&self) -> u16 {
        let node = self.node.load(std::sync::atomic::Ordering::SeqCst);
        u16::try_from(node).expect("the node id is set from a u16")
    }

    /// Switches to a newly leased node id (after the previous lease was lost). Ids stay
    /// unique: no other live node holds the new id.
    ///
    /// # Panics
    /// If `node` does not fit in [`NODE_BITS`] bits.
    pub fn set_node(&self, node: u16) {
        assert!(node <= MAX_NODE, "sequencer node id {node} > {MAX_NODE}");
        let _state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.node
            .store(u64::from(node), std::sync::atomic::Ordering::SeqCst);
    }

    /// The next id. A clock that steps backwards does not produce duplicates: time is taken as
    /// `max(clock, last)`, and when a millisecond's counter runs out the id borrows the next
    /// millisecond, so ids stay unique and increasing; they rejoin wall time once it catches up.
    pub fn next_id(&self) -> u64 {
        let now = self.clock.now_ms().saturating_sub(EPOCH_MS);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now > s.last_ms {
            s.last_ms = now;
            s.counter = 0;
        } else if s.counter < MAX_COUNTER {
            s.counter += 1;
        } else {
            s.last_ms += 1;
            s.counter = 0;
        }
        let node = self.node.load(std::sync::atomic::Ordering::SeqCst);
        (s.last_ms << (NODE_BITS + COUNTER_BITS)) | (node << COUNTER_BITS) | s.counter
    }
}

/// The millisecond timestamp (Unix epoch) an id was made in.
pub fn id_time_ms(id: u64) -> u64 {
    (id >> (NODE_BITS + COUNTER_BITS)) + EPOCH_MS
}

/// The node an id was made on.
pub fn id_node(id: u64) -> u16 {
    u16::try_from((id >> COUNTER_BITS) & u64::from(MAX_NODE)).expect("masked to NODE_BITS")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct FakeClock(Arc<AtomicU64>);
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn ids_encode_time_and_node() {
        let seq = Sequencer::new(513);
        let before = SystemClock.now_ms();
        let id = seq.next_id();
        assert_eq!(id_node(id), 513);
        assert!(id_time_ms(id) >= before && id_time_ms(id) <= SystemClock.now_ms());
    }

    #[test]
    fn clock_stepping_backwards_never_repeats() {
        let t = Arc::new(AtomicU64::new(EPOCH_MS + 1_000_000));
        let seq = Sequencer::with_clock(1, Box::new(FakeClock(t.clone())));
        let mut seen = HashSet::new();
        let mut last = 0;
        for round in 0..5 {
            for _ in 0..10_000 {
                let id = seq.next_id();
                assert!(seen.insert(id), "duplicate id in round {round}");
                assert!(id > last, "ids must increase");
                last = id;
            }
            // Step back one second, as NTP might.
            t.fetch_sub(1_000, Ordering::SeqCst);
        }
    }

    #[test]
    fn counter_overflow_borrows_the_next_millisecond() {
        let t = Arc::new(AtomicU64::new(EPOCH_MS + 5));
        let seq = Sequencer::with_clock(0, Box::new(FakeClock(t)));
        let ids: Vec<u64> = (0..=MAX_COUNTER + 1).map(|_| seq.next_id()).collect();
        assert_eq!(id_time_ms(ids[0]), EPOCH_MS + 5);
        assert_eq!(id_time_ms(*ids.last().unwrap()), EPOCH_MS + 6);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    }

    #[test]
    fn concurrent_callers_get_distinct_ids() {
        let seq = Arc::new(Sequencer::new(7));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = seq.clone();
                std::thread::spawn(move || (0..20_000).map(|_| s.next_id()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id));
            }
        }
        assert_eq!(all.len(), 80_000);
    }
}
