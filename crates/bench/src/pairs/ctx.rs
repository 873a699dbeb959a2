//! What every worker of a run shares: the schedule, the clock, the deadlines, the live
//! counters.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use confab_client::{ConnectionReceiver, ConnectionSender, Id};
use tokio::time::Instant;

use crate::schedule::Schedule;

/// Counters the progress bar shows while a run goes.
#[derive(Default)]
pub(super) struct Live {
    pub(super) sent: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// What every worker of a run shares.
pub(super) struct RunCtx {
    pub(super) schedule: Schedule,
    pub(super) run: u32,
    pub(super) body_len: usize,
    /// The instant all offsets count from.
    pub(super) start: Instant,
    /// The schedule's end, ns after start.
    pub(super) window_end_ns: u64,
    pub(super) grace: Duration,
    /// Sends still due after this are abandoned: the bench is hopelessly behind.
    pub(super) stop_sending: Instant,
    /// Nothing waits past this.
    pub(super) hard_deadline: Instant,
    pub(super) ack_interval: Option<Duration>,
    /// Every worker waits here once its own sends have settled, before its final acks and
    /// closes: the workers' users send in turn, so one worker is through up to half a round
    /// before the other, and its thousands of acks and closes would land on the server while
    /// the other's last messages are still measured.
    pub(super) settled: tokio::sync::Barrier,
    pub(super) live: Live,
}

impl RunCtx {
    pub(super) fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos() as u64
    }
}

/// One socket's halves as a worker gets them.
pub(super) struct Socket {
    pub(super) sender: ConnectionSender,
    pub(super) receiver: ConnectionReceiver,
    pub(super) user: Id,
}
