//! What every worker of a run shares: the schedule, the clock, the deadlines, the live
//! counters.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use confab_client::{ConnectionReceiver, ConnectionSender, Id};
use tokio::time::Instant;

use super::Pace;
use crate::schedule::Schedule;

/// Counters the progress bar shows while a run goes.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// What every worker of a run shares.
pub(crate) struct RunCtx {
    pub(crate) schedule: Schedule,
    pub(crate) run: u32,
    pub(crate) body_len: usize,
    /// The instant all offsets count from.
    pub(crate) start: Instant,
    /// The schedule's end, ns after start.
    pub(crate) window_end_ns: u64,
    pub(crate) grace: Duration,
    /// Sends still due after this are abandoned: the bench is hopelessly behind.
    pub(crate) stop_sending: Instant,
    /// Nothing waits past this.
    pub(crate) hard_deadline: Instant,
    pub(crate) ack_interval: Option<Duration>,
    /// Every worker waits here once its own sends have settled, before its final acks and
    /// closes: the workers' users send in turn, so one worker is through up to half a round
    /// before the other, and its thousands of acks and closes would land on the server while
    /// the other's last messages are still measured.
    pub(crate) settled: tokio::sync::Barrier,
    pub(crate) live: Live,
}

impl RunCtx {
    /// A run of `schedule` whose `workers` start sending in 100 ms, paced as `pace` says.
    pub(crate) fn new(schedule: Schedule, pace: &Pace, workers: usize) -> RunCtx {
        let duration = Duration::from_secs_f64(pace.duration_s);
        let grace = Duration::from_secs_f64(pace.grace_s);
        // Let every worker get going before the first send is due.
        let start = Instant::now() + Duration::from_millis(100);
        RunCtx {
            run: rand::random(),
            body_len: pace.body_bytes,
            start,
            window_end_ns: duration.as_nanos() as u64,
            grace,
            stop_sending: start + duration + grace,
            hard_deadline: start + duration + grace * 2 + Duration::from_secs(10),
            ack_interval: (pace.ack_interval_ms > 0)
                .then(|| Duration::from_millis(pace.ack_interval_ms)),
            settled: tokio::sync::Barrier::new(workers),
            live: Live::default(),
            schedule,
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos() as u64
    }
}

/// One socket's halves as a worker gets them.
pub(crate) struct Socket {
    pub(crate) sender: ConnectionSender,
    pub(crate) receiver: ConnectionReceiver,
    pub(crate) user: Id,
}
