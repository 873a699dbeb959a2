//! One phase of `push`: the senders connect, send to the phase's recipients on the open-loop
//! schedule (message `k` to recipient `k mod N`), and the server's CPU and writes are read
//! from the schedule's start until the phase is over: for the push phase, until every
//! notification has reached the receiver (or the wait ran out), then a short settle in both
//! phases, so that each is charged all the work its messages caused.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use confab_client::Id;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::PushConfig;
use super::ledger::{Logs, PushLedger};
use super::matching::{Notifications, Sent};
use super::metrics::{self, PushCounters};
use super::receiver::Receiver;
use crate::pairs::{ProcWindow, Route, RunCtx, Socket, connect_all, drive, run_worker};
use crate::report;
use crate::schedule::{Planned, Schedule};
use crate::stats::{LatencySummary, ProcessStats};
use crate::target::{SeededAccount, Target};

/// After the phase's last work (the last ack, echo or notification), how long the server's
/// readings wait for the writes that follow it (a notification's outcome, the final acks).
const SETTLE: Duration = Duration::from_millis(500);
/// With fewer notifications than messages (coalesced ones), the wait ends once none has
/// arrived for this long and the server says nothing is left: its backlog gauge is read
/// about once a second, so a reading this long after the last arrival is a fresh one.
const QUIET: Duration = Duration::from_millis(2_500);

/// What one phase measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// Seconds to open the senders' sockets.
    pub connect_s: f64,
    /// Messages the schedule held, written, not written, acked, refused, and written but
    /// answered neither way within the grace period.
    pub scheduled: u64,
    pub sent: u64,
    pub unsent: u64,
    pub acked: u64,
    pub refused: u64,
    pub unacked: u64,
    /// Echoes to the senders' own sockets read twice, and messages from outside the run.
    pub duplicates: u64,
    pub foreign: u64,
    pub errors: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    /// `sent` per second of the schedule's duration.
    pub sent_per_sec: f64,
    /// The sender's read of `sent` − the intended send time.
    pub ack_latency_ms: LatencySummary,
    /// The sender's actual write − the intended send time: how far behind the bench was.
    pub send_lag_ms: LatencySummary,
    /// Seconds the server's and the bench's CPU and writes were read over.
    pub measured_s: f64,
    pub server_process: Option<ProcessStats>,
    pub bench_process: Option<ProcessStats>,
    /// The push server's counters' growth over the phase.
    pub push_counters: PushCounters,
    /// What the receiver got (the push phase only).
    pub notifications: Option<Notifications>,
}

impl PhaseReport {
    /// The spawned server's CPU per acked message, µs.
    pub fn cpu_us_per_message(&self) -> Option<f64> {
        let cpu = self.server_process.as_ref()?.cpu_secs;
        (self.acked > 0).then(|| cpu * 1e6 / self.acked as f64)
    }

    /// What the spawned server wrote toward the disk per acked message, KiB.
    pub fn disk_kib_per_message(&self) -> Option<f64> {
        let mib = self.server_process.as_ref()?.disk_written_mib?;
        (self.acked > 0).then(|| mib * 1024.0 / self.acked as f64)
    }

    /// What the spawned server passed to `write(2)` per acked message, KiB.
    pub fn wchar_kib_per_message(&self) -> Option<f64> {
        let mib = self.server_process.as_ref()?.chars_written_mib?;
        (self.acked > 0).then(|| mib * 1024.0 / self.acked as f64)
    }
}

/// What a phase runs against.
pub(super) struct Phase<'a> {
    pub(super) target: &'a Target,
    pub(super) cfg: &'a PushConfig,
    pub(super) senders: &'a [SeededAccount],
    pub(super) recipients: &'a [SeededAccount],
    /// The receiver the recipients are subscribed to (the push phase), or none.
    pub(super) receiver: Option<&'a Receiver>,
    pub(super) client: &'a reqwest::Client,
    pub(super) bars: bool,
}

impl Phase<'_> {
    /// Runs the phase.
    pub(super) async fn run(&self) -> anyhow::Result<PhaseReport> {
        let cfg = self.cfg;
        let base = format!("http://{}", self.target.addr);
        let connected = connect_all(
            self.target,
            self.senders,
            cfg.connect_concurrency,
            cfg.body_bytes,
            self.bars,
        )
        .await?;
        let before = metrics::scrape(self.client, &base).await?;
        let duration = Duration::from_secs_f64(cfg.duration_s);
        let schedule = Schedule::new(cfg.rate, duration, cfg.senders);
        let opened = Instant::now();
        let window = ProcWindow::open(self.target);
        let workers = cfg.workers.clamp(1, cfg.senders);
        let ctx = Arc::new(RunCtx::new(schedule, &cfg.pace(), workers));
        if let Some(r) = self.receiver {
            r.begin(cfg.decrypt_every, ctx.schedule.total() as usize);
        }
        let logs = Logs::default();
        let recipients: Arc<Vec<Id>> =
            Arc::new(self.recipients.iter().map(|a| a.user_id).collect());
        let mut handles = Vec::with_capacity(workers);
        let mut rest = connected.sockets.into_iter();
        for w in 0..workers {
            let (a, b) = (w * cfg.senders / workers, (w + 1) * cfg.senders / workers);
            let mine: Vec<Socket> = rest.by_ref().take(b - a).collect();
            let users = mine.iter().map(|s| s.user).collect();
            let ledger = PushLedger::new(users, a, &ctx.schedule, logs.clone());
            let recipients = recipients.clone();
            let route = move |p: &Planned| Route {
                socket: p.sender - a,
                to: Some(recipients[(p.k % recipients.len() as u64) as usize]),
                conversation: None,
            };
            handles.push(tokio::spawn(run_worker(
                mine,
                a..b,
                route,
                ledger,
                ctx.clone(),
            )));
        }
        // The progress bar's "delivered" is the receiver's count.
        let mirror = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some(r) = self.receiver {
                    ctx.live.delivered.store(r.count(), Ordering::Relaxed);
                }
            }
        };
        let total = tokio::select! {
            total = drive(&ctx, handles, self.bars) => total?,
            () = mirror => unreachable!("the mirror never ends"),
        };
        let wait_start = Instant::now();
        let complete = match self.receiver {
            Some(r) => {
                let deadline =
                    wait_start.max(ctx.start + duration) + Duration::from_secs_f64(cfg.push_wait_s);
                self.wait_for(r, total.acked, &base, wait_start, deadline)
                    .await
            }
            None => true,
        };
        // From the schedule's end to the end of the wait.
        let waited_s = Instant::now()
            .saturating_duration_since(ctx.start + duration)
            .as_secs_f64();
        tokio::time::sleep(SETTLE).await;
        let (server_process, bench_process) = window.close(self.target);
        let measured_s = opened.elapsed().as_secs_f64();
        let after = metrics::scrape(self.client, &base).await?;

        let notifications = self.receiver.map(|r| {
            let (arrivals, unknown) = r.take();
            let logs = std::mem::take(&mut *logs.lock().unwrap_or_else(PoisonError::into_inner));
            let messages = self.per_device(&ctx.schedule, &logs);
            let mut n = Notifications::tally(
                &messages,
                &arrivals,
                ctx.start.into_std(),
                cfg.duration_s,
                ctx.run,
            );
            n.unknown = unknown;
            n.complete = complete;
            n.waited_s = waited_s;
            n
        });
        Ok(PhaseReport {
            connect_s: connected.connect_s,
            scheduled: ctx.schedule.total(),
            sent: total.written,
            unsent: total.unsent,
            acked: total.acked,
            refused: total.refused,
            unacked: total.unacked,
            duplicates: total.duplicates,
            foreign: total.foreign,
            errors: total.errors,
            disconnects: total.disconnects,
            sent_per_sec: total.written as f64 / cfg.duration_s,
            ack_latency_ms: LatencySummary::of(&total.ack_latency),
            send_lag_ms: LatencySummary::of(&total.send_lag),
            measured_s,
            server_process,
            bench_process,
            push_counters: after.counters.since(&before.counters),
            notifications,
        })
    }

    /// Waits until `expected` notifications have arrived, or none has for a while and the
    /// server has nothing left to send, or `deadline`. Returns whether it did not time out.
    async fn wait_for(
        &self,
        receiver: &Receiver,
        expected: u64,
        base: &str,
        start: Instant,
        deadline: Instant,
    ) -> bool {
        let bar = report::bar(
            self.bars,
            expected,
            "notifications {bar:40} {pos}/{len} arrived",
        );
        let mut last_scrape: Option<Instant> = None;
        let complete = loop {
            let got = receiver.count();
            bar.set_position(got);
            if got >= expected {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            let quiet_since = receiver
                .last_arrival()
                .map_or(start, |t| Instant::from_std(t).max(start));
            if now.duration_since(quiet_since) >= QUIET
                && last_scrape.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                last_scrape = Some(now);
                if let Ok(s) = metrics::scrape(self.client, base).await
                    && s.backlog == 0
                {
                    break true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        bar.finish_and_clear();
        complete
    }

    /// The acked messages of the phase per recipient device, each device's in the order
    /// they were sent.
    fn per_device(&self, schedule: &Schedule, logs: &[super::ledger::SenderLog]) -> Vec<Vec<Sent>> {
        let (senders, devices) = (self.cfg.senders as u64, self.recipients.len());
        let mut by_sender: Vec<Option<&super::ledger::SenderLog>> = vec![None; self.cfg.senders];
        for log in logs {
            by_sender[log.sender] = Some(log);
        }
        let mut messages: Vec<Vec<Sent>> = vec![Vec::new(); devices];
        for k in 0..schedule.total() {
            let (sender, seq) = ((k % senders) as usize, (k / senders) as usize);
            let Some(log) = by_sender[sender].filter(|l| l.acked(seq)) else {
                continue;
            };
            messages[(k % devices as u64) as usize].push(Sent {
                intended_ns: schedule.offset_ns(k),
                id: log.ids[seq],
                from: self.senders[sender].user_id,
            });
        }
        messages
    }
}
