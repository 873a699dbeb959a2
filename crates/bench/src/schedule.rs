//! The open-loop send schedule: when each message is due and who sends it.
//!
//! Send times are fixed by the rate alone, never by how fast the server answers, so a slow
//! server cannot slow the offered load down (no coordinated omission): message `k` of the run
//! is due `k / rate` seconds after the start and is sent by user `k mod senders`. Round-robin
//! keeps every user at the same rate (`rate / senders`) and spreads consecutive sends over
//! different connections.

use std::ops::Range;
use std::time::Duration;

/// One planned send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Index of the send within the whole run.
    pub k: u64,
    /// Which user (index into the run's users) sends it.
    pub sender: usize,
    /// The sender's own sequence number for it, from 0.
    pub seq: u32,
    /// When it is due, in nanoseconds after the run's start.
    pub offset_ns: u64,
}

/// The sends of a run of `total` messages at `rate` per second over `senders` users.
#[derive(Clone, Debug)]
pub struct Schedule {
    rate: f64,
    total: u64,
    senders: usize,
}

impl Schedule {
    /// `rate` msgs/s for `duration`: `round(rate * duration)` sends over `senders` users.
    pub fn new(rate: f64, duration: Duration, senders: usize) -> Schedule {
        assert!(rate > 0.0 && rate.is_finite(), "rate must be positive");
        assert!(senders > 0, "need at least one sender");
        let total = (rate * duration.as_secs_f64()).round() as u64;
        Schedule {
            rate,
            total,
            senders,
        }
    }

    /// How many sends the run has.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When send `k` is due, in nanoseconds after the start.
    pub fn offset_ns(&self, k: u64) -> u64 {
        (k as f64 * 1e9 / self.rate).round() as u64
    }

    /// When `sender`'s send number `seq` is due, in nanoseconds after the start.
    pub fn offset_of(&self, sender: usize, seq: u32) -> u64 {
        self.offset_ns(sender as u64 + self.senders as u64 * u64::from(seq))
    }

    /// How many sends user `sender` makes.
    pub fn count_for(&self, sender: usize) -> usize {
        let n = self.senders as u64;
        let s = sender as u64;
        if s >= n {
            return 0;
        }
        (self.total / n + u64::from(s < self.total % n)) as usize
    }

    /// The sends of the users in `senders`, in time order.
    pub fn iter_range(&self, senders: Range<usize>) -> ScheduleIter<'_> {
        let end = senders.end.min(self.senders);
        ScheduleIter {
            schedule: self,
            start: senders.start,
            end,
            next_sender: senders.start,
            round: 0,
        }
    }
}

/// The sends of a range of users in time order (see [`Schedule::iter_range`]).
#[derive(Clone, Debug)]
pub struct ScheduleIter<'a> {
    schedule: &'a Schedule,
    start: usize,
    end: usize,
    next_sender: usize,
    round: u64,
}

impl Iterator for ScheduleIter<'_> {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.start >= self.end {
            return None;
        }
        if self.next_sender >= self.end {
            self.next_sender = self.start;
            self.round += 1;
        }
        let sender = self.next_sender;
        let k = sender as u64 + self.schedule.senders as u64 * self.round;
        // Within a round `k` grows with the sender, and every later round is later still.
        if k >= self.schedule.total {
            self.start = self.end;
            return None;
        }
        self.next_sender += 1;
        Some(Planned {
            k,
            sender,
            seq: self.round as u32,
            offset_ns: self.schedule.offset_ns(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_times_duration_sends_at_k_over_rate() {
        let s = Schedule::new(200.0, Duration::from_secs(3), 10);
        assert_eq!(s.total(), 600);
        let all: Vec<Planned> = s.iter_range(0..10).collect();
        assert_eq!(all.len(), 600);
        for (i, p) in all.iter().enumerate() {
            assert_eq!(p.k, i as u64, "time order is k order");
            assert_eq!(p.offset_ns, i as u64 * 5_000_000, "one send every 5 ms");
            assert_eq!(p.sender, i % 10);
            assert_eq!(p.seq as usize, i / 10);
            assert_eq!(s.offset_of(p.sender, p.seq), p.offset_ns);
        }
        assert!(all.last().unwrap().offset_ns < 3_000_000_000);
    }

    #[test]
    fn sends_spread_evenly_over_senders_and_ranges_partition_them() {
        let s = Schedule::new(1000.0, Duration::from_millis(1003), 7);
        assert_eq!(s.total(), 1003);
        let counts: Vec<usize> = (0..7).map(|u| s.count_for(u)).collect();
        assert_eq!(counts.iter().sum::<usize>(), 1003);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        assert_eq!(s.count_for(7), 0);

        let parts = [0..2, 2..3, 3..7];
        let mut ks: Vec<u64> = Vec::new();
        for r in parts {
            let part: Vec<Planned> = s.iter_range(r.clone()).collect();
            assert!(part.windows(2).all(|w| w[0].offset_ns <= w[1].offset_ns));
            assert!(part.iter().all(|p| r.contains(&p.sender)));
            for u in r {
                let mine: Vec<u32> = part
                    .iter()
                    .filter(|p| p.sender == u)
                    .map(|p| p.seq)
                    .collect();
                assert_eq!(mine, (0..s.count_for(u) as u32).collect::<Vec<_>>());
            }
            ks.extend(part.iter().map(|p| p.k));
        }
        ks.sort_unstable();
        assert_eq!(ks, (0..1003).collect::<Vec<_>>());
    }

    #[test]
    fn fractional_rates_and_empty_ranges() {
        let s = Schedule::new(2.5, Duration::from_secs(2), 4);
        assert_eq!(s.total(), 5);
        let offsets: Vec<u64> = s.iter_range(0..4).map(|p| p.offset_ns).collect();
        assert_eq!(
            offsets,
            [0, 400_000_000, 800_000_000, 1_200_000_000, 1_600_000_000]
        );
        assert_eq!(s.iter_range(2..2).count(), 0);
        assert_eq!(s.iter_range(5..9).count(), 0);
    }
}
