//! `confab bench pairs`: users in pairs, each sending to its partner on an open-loop schedule;
//! measures delivered throughput and end-to-end latency.
//!
//! Latency is measured from the **intended** send time (the schedule's), not from the moment
//! the bench got round to writing: a stall anywhere (server, network, or the bench itself)
//! counts against every message that should have left during it. That is the
//! coordinated-omission-corrected number; the latency from the actual write is reported
//! beside it, and so is the bench's own lag behind the schedule, which says whether the bench
//! kept up. Both times travel in the message body, so the recipient, in this same process,
//! computes the latency against the same clock.
//!
//! Connections are spread over a few workers (default: one per core), each owning whole pairs
//! so that all bookkeeping of a pair stays in one place: a sender task walks the worker's part
//! of the schedule and writes, a reader task multiplexes the worker's sockets, records acks,
//! deliveries and errors, and asks the sender to ack the cursor now and then.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use confab_client::{ClientFrame, ConnectionReceiver, ConnectionSender, Id, ServerFrame};
use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::body::{self, Stamp};
use crate::connect::{connect_synced, count, sdk_reason};
use crate::report::{self, Table, fmt_counts, fmt_n};
use crate::schedule::Schedule;
use crate::stats::{self, LatencySummary, ProcSample, ProcessStats};
use crate::target::Target;

/// Most messages one run may schedule (the bookkeeping costs two bytes each).
pub const MAX_MESSAGES: u64 = 200_000_000;
/// Longest run, seconds.
pub const MAX_DURATION_SECS: f64 = 3_600.0;
/// Longest grace period, seconds.
pub const MAX_GRACE_SECS: f64 = 600.0;
/// Most users one run may connect.
pub const MAX_USERS: usize = 1_000_000;
/// The frames a server accepts per socket per second by default (`Config::frame_rate_per_sec`).
const SERVER_FRAME_RATE: f64 = 200.0;
/// The default per-device send rate of `confab serve`.
const SERVER_DEFAULT_SEND_RATE: f64 = 20.0;

/// How the load is shaped: shared by `pairs` and `sweep`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Users (one connection each), paired 0↔1, 2↔3, …: an even number.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub users: usize,
    /// Seconds of sending (per step, for sweep).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Message body size in bytes, 48-4096 (the first 48 carry the run, sequence and timestamps).
    #[arg(long, short = 'b', default_value_t = 100)]
    pub body: usize,
    /// Seconds to wait after the last send for outstanding acks and deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Workers the connections are spread over (each a sender task and a reader task)
    /// [default: one per core].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Milliseconds between acks of received messages, per connection (0: only at the end).
    /// Each connection acks at its own millisecond of the interval, so acks arrive spread
    /// out as from independent clients.
    #[arg(long, default_value_t = 1000)]
    pub ack_interval: u64,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// `confab bench pairs`.
#[derive(clap::Args, Clone, Debug)]
pub struct PairsArgs {
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Offered load: messages per second over all users together.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    #[command(flatten)]
    pub output: report::OutputArgs,
}

/// The validated parameters of one `pairs` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairsConfig {
    pub users: usize,
    /// Offered messages per second, all users together.
    pub rate: f64,
    pub duration_s: f64,
    pub body_bytes: usize,
    pub grace_s: f64,
    pub workers: usize,
    pub ack_interval_ms: u64,
    pub connect_concurrency: usize,
}

impl LoadArgs {
    /// Checks the flags and bounds the run in count and time.
    pub fn config(&self, rate: f64) -> Result<PairsConfig, String> {
        if self.users < 2 || !self.users.is_multiple_of(2) || self.users > MAX_USERS {
            return Err(format!(
                "--users must be an even number from 2 to {MAX_USERS}"
            ));
        }
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number of messages per second".into());
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--duration must be more than 0 and at most {MAX_DURATION_SECS} seconds"
            ));
        }
        if !(self.grace.is_finite() && self.grace >= 0.0 && self.grace <= MAX_GRACE_SECS) {
            return Err(format!("--grace must be 0 to {MAX_GRACE_SECS} seconds"));
        }
        if !(body::STAMP_LEN..=confab_protocol::MAX_BODY_BYTES).contains(&self.body) {
            return Err(format!(
                "--body must be {} to {} bytes",
                body::STAMP_LEN,
                confab_protocol::MAX_BODY_BYTES
            ));
        }
        let total = (rate * self.duration).round();
        if total < 1.0 {
            return Err("--rate × --duration schedules no message".into());
        }
        if total > MAX_MESSAGES as f64 {
            return Err(format!(
                "--rate × --duration schedules {total} messages; at most {MAX_MESSAGES} per run"
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cores);
        if workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        Ok(PairsConfig {
            users: self.users,
            rate,
            duration_s: self.duration,
            body_bytes: self.body,
            grace_s: self.grace,
            workers: workers.min(self.users / 2),
            ack_interval_ms: self.ack_interval,
            connect_concurrency: self.connect_concurrency.max(1),
        })
    }
}

impl PairsConfig {
    /// Sends each user makes per second.
    pub fn per_user_rate(&self) -> f64 {
        self.rate / self.users as f64
    }

    /// Notes for the user about server limits this load would run into.
    pub fn limit_notes(&self, spawned_send_rate: Option<f64>) -> Vec<String> {
        let mut notes = Vec::new();
        let per_user = self.per_user_rate();
        match spawned_send_rate {
            None if per_user > SERVER_DEFAULT_SEND_RATE => notes.push(format!(
                "each user sends {per_user:.1} msgs/s; a server at its default limit (20 msgs/s per \
                 device, burst 100) answers the excess with rate_limited: start it with \
                 `confab serve --send-rate {} --send-burst {}` or more",
                (per_user * 2.0).ceil(),
                ((per_user * 2.0).ceil() as u64).max(100)
            )),
            Some(limit) if per_user > limit => notes.push(format!(
                "each user sends {per_user:.1} msgs/s, above the spawned server's --server-send-rate {limit}"
            )),
            _ => {}
        }
        let acks = if self.ack_interval_ms > 0 {
            1000.0 / self.ack_interval_ms as f64
        } else {
            0.0
        };
        // A spawned server gets its frame limit raised with its send limit.
        if spawned_send_rate.is_none() && per_user + acks > SERVER_FRAME_RATE {
            let frames = (per_user + acks) * 2.0;
            notes.push(format!(
                "each socket would send {:.0} frames/s; a server at its default limit (200 \
                 frames/s per socket, burst 400) answers the excess with rate_limited: start it \
                 with `confab serve --frame-rate {} --frame-burst {}` or more",
                per_user + acks,
                frames.ceil(),
                (frames.ceil() as u64).max(400)
            ));
        }
        let total = (self.rate * self.duration_s).round() as u64;
        if total < self.users as u64 {
            notes.push(format!(
                "only {total} messages are scheduled for {} users: some users never send",
                self.users
            ));
        }
        notes
    }
}

/// Everything one `pairs` run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairsReport {
    pub config: PairsConfig,
    /// The WebSocket URL loaded (several, comma-separated, for the nodes of a cluster).
    pub server: String,
    pub spawned: bool,
    /// Random id of this run, in every `client_id` and body.
    pub run_id: u32,
    /// Seconds to open all sockets (connect, hello, catch-up to `synced`).
    pub connect_s: f64,
    /// Old messages replayed to the sockets on connect (history of earlier runs).
    pub replayed: u64,
    /// Messages the schedule held.
    pub scheduled: u64,
    /// Messages written to a socket.
    pub sent: u64,
    /// Scheduled but never written (dead socket, or the bench fell more than the grace
    /// period behind its schedule).
    pub unsent: u64,
    /// Sends answered with `sent` (durably stored).
    pub acked: u64,
    /// Sends answered with an `error` frame naming them (e.g. `rate_limited`).
    pub refused: u64,
    /// Messages the partner received (each counted once).
    pub delivered: u64,
    /// Of those, received before the schedule's end.
    pub delivered_in_window: u64,
    /// `sent` per second of the schedule's duration.
    pub sent_per_sec: f64,
    /// The delivered throughput: `delivered` over the time from the schedule's start to the
    /// last delivery (at least the schedule's duration). A server that keeps up delivers at
    /// the offered rate; an overloaded one works through its backlog after the schedule's end
    /// and so shows its capacity, not a share of the offered rate cut off by the deadline.
    pub delivered_per_sec: f64,
    /// Seconds from the schedule's start to the last delivery.
    pub last_delivery_s: f64,
    /// Acked, but not received by the partner by the end of the grace period.
    pub undelivered: u64,
    /// Written, but neither `sent` nor an `error` came back by the end of the grace period.
    pub unacked: u64,
    /// Messages the partner received more than once.
    pub duplicates: u64,
    /// Messages from outside this run (other senders, earlier runs), ignored.
    pub foreign: u64,
    /// `error` frames by code, plus failed writes.
    pub errors: BTreeMap<String, u64>,
    /// Sockets that ended during the run, by close code.
    pub disconnects: BTreeMap<String, u64>,
    /// What `latency_ms` is measured from.
    pub latency_from: String,
    /// Recipient's read − intended send time (coordinated-omission corrected).
    pub latency_ms: LatencySummary,
    /// Recipient's read − the sender's actual write.
    pub write_latency_ms: LatencySummary,
    /// The sender's actual write − intended send time: how far behind its schedule the bench was.
    pub send_lag_ms: LatencySummary,
    /// The spawned server's CPU and memory over the run.
    pub server_process: Option<ProcessStats>,
    /// This bench process's CPU and memory over the run.
    pub bench_process: Option<ProcessStats>,
}

/// What `latency_ms` is measured from, as the report says it.
const LATENCY_FROM: &str =
    "intended send time (open-loop schedule, coordinated-omission corrected)";

impl fmt::Display for PairsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut t = Table::new(format!(
            "confab bench pairs: {} users, {} msgs/s offered for {} s, {}-byte bodies",
            fmt_n(c.users as u64),
            c.rate,
            c.duration_s,
            c.body_bytes
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "connected",
            format!(
                "{} sockets in {:.2} s ({} workers)",
                fmt_n(c.users as u64),
                self.connect_s,
                c.workers
            ),
        );
        t.row(
            "sent",
            format!(
                "{} of {} scheduled ({:.1} msgs/s)",
                fmt_n(self.sent),
                fmt_n(self.scheduled),
                self.sent_per_sec
            ),
        );
        t.row(
            "acked / refused",
            format!("{} / {}", fmt_n(self.acked), fmt_n(self.refused)),
        );
        t.row(
            "delivered",
            format!(
                "{}: {:.1} msgs/s ({} before the schedule's end, the last at {:.2} s)",
                fmt_n(self.delivered),
                self.delivered_per_sec,
                fmt_n(self.delivered_in_window),
                self.last_delivery_s
            ),
        );
        t.row(
            "undelivered",
            format!(
                "{} (acked, not received within the {} s grace)",
                fmt_n(self.undelivered),
                c.grace_s
            ),
        );
        t.row("unacked", fmt_n(self.unacked));
        if self.unsent > 0 {
            t.row("unsent", fmt_n(self.unsent));
        }
        if self.duplicates > 0 || self.foreign > 0 {
            t.row(
                "duplicates/foreign",
                format!("{} / {}", fmt_n(self.duplicates), fmt_n(self.foreign)),
            );
        }
        t.row("errors", fmt_counts(&self.errors));
        t.row("disconnects", fmt_counts(&self.disconnects));
        t.row("latency", self.latency_ms.line());
        t.row("  measured from", "the intended (scheduled) send time");
        t.row("latency from write", self.write_latency_ms.line());
        t.row("bench lag", self.send_lag_ms.line());
        if let Some(s) = &self.server_process {
            t.row("server", process_line(s));
        }
        if let Some(written) = self
            .server_process
            .as_ref()
            .and_then(|s| s.disk_written_mib)
        {
            t.row("server disk", disk_line(written, self.delivered));
        }
        if let Some(s) = &self.bench_process {
            t.row("bench", process_line(s));
        }
        write!(f, "{t}")
    }
}

/// `CPU 85.0 % of a core (2.55 s), RSS 40.1 MiB (peak 42.0 MiB)`.
pub fn process_line(s: &ProcessStats) -> String {
    format!(
        "pid {}: CPU {:.1} % of a core ({:.2} s), RSS {:.1} MiB (peak {:.1} MiB)",
        s.pid, s.cpu_pct, s.cpu_secs, s.rss_mib, s.peak_rss_mib
    )
}

/// `812.4 MiB written toward the disk: 3.3 KiB per message` (what a durable message costs in
/// writes: WAL frames, checkpoints, acks).
fn disk_line(written_mib: f64, messages: u64) -> String {
    let per = if messages > 0 {
        format!(
            ": {:.1} KiB per message",
            written_mib * 1024.0 / messages as f64
        )
    } else {
        String::new()
    };
    format!("{written_mib:.1} MiB written toward the disk{per}")
}

/// `confab bench pairs`: sets up the target, runs, prints.
pub async fn main(args: PairsArgs) -> anyhow::Result<bool> {
    let cfg = args
        .load
        .config(args.rate)
        .map_err(|e| anyhow::Error::new(crate::UsageError(e)))?;
    let spawned_rate = args.target.spawn.then_some(args.target.server_send_rate);
    for n in cfg.limit_notes(spawned_rate) {
        report::note(n);
    }
    crate::target::ensure_fd_budget(cfg.users)?;
    let target = Target::prepare(&args.target, cfg.users).await?;
    let result = run_pairs(&target, &cfg, args.output.bars()).await;
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    if report.undelivered > 0 {
        report::note(format!(
            "{} acked messages were not delivered within the {} s grace period (latency p99.9 \
             {}); a longer --grace tells lateness from loss",
            report.undelivered,
            cfg.grace_s,
            crate::stats::fmt_ms(report.latency_ms.p999_ms)
        ));
    }
    Ok(report.undelivered == 0)
}

/// Counters the progress bar shows while a run goes.
#[derive(Default)]
struct Live {
    sent: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
}

/// What every worker of a run shares.
struct RunCtx {
    schedule: Schedule,
    run: u32,
    body_len: usize,
    /// The instant all offsets count from.
    start: Instant,
    /// The schedule's end, ns after start.
    window_end_ns: u64,
    grace: Duration,
    /// Sends still due after this are abandoned: the bench is hopelessly behind.
    stop_sending: Instant,
    /// Nothing waits past this.
    hard_deadline: Instant,
    ack_interval: Option<Duration>,
    /// Every worker waits here once its own sends have settled, before its final acks and
    /// closes: the workers' users send in turn, so one worker is through up to half a round
    /// before the other, and its thousands of acks and closes would land on the server while
    /// the other's last messages are still measured.
    settled: tokio::sync::Barrier,
    live: Live,
}

impl RunCtx {
    fn now_ns(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.start)
            .as_nanos() as u64
    }
}

/// One socket's halves as a worker gets them.
struct Socket {
    sender: ConnectionSender,
    receiver: ConnectionReceiver,
    user: Id,
}

/// Runs `pairs` against `target` (its first `cfg.users` accounts).
pub async fn run_pairs(
    target: &Target,
    cfg: &PairsConfig,
    bars: bool,
) -> anyhow::Result<PairsReport> {
    if target.accounts.len() < cfg.users {
        bail!("{} accounts for {} users", target.accounts.len(), cfg.users);
    }
    let accounts = &target.accounts[..cfg.users];

    // Connect everything first, so that connecting is not part of the measured run.
    let connect_bar = report::bar(
        bars,
        cfg.users as u64,
        "connecting {bar:40} {pos}/{len} sockets ({per_sec})",
    );
    let read_buffer = read_buffer_for(cfg.body_bytes);
    let t0 = Instant::now();
    let results: Vec<anyhow::Result<crate::connect::Synced>> =
        stream::iter(accounts.iter().enumerate())
            .map(|(i, a)| {
                let bar = connect_bar.clone();
                async move {
                    let r = connect_synced(target.ws_url_for(i), &a.token, None, read_buffer).await;
                    bar.inc(1);
                    r
                }
            })
            .buffered(cfg.connect_concurrency)
            .collect()
            .await;
    connect_bar.finish_and_clear();
    let connect_s = t0.elapsed().as_secs_f64();
    let mut failures = BTreeMap::new();
    let mut sockets = Vec::with_capacity(cfg.users);
    let mut replayed = 0u64;
    for r in results {
        match r {
            Ok(s) => {
                replayed += s.replayed as u64;
                let (sender, receiver) = s.conn.split();
                sockets.push(Socket {
                    sender,
                    receiver,
                    user: s.welcome.user_id,
                });
            }
            Err(e) => count(&mut failures, &format!("{e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} sockets failed to connect: {}",
            cfg.users - sockets.len(),
            cfg.users,
            fmt_counts(&failures)
        );
    }

    let duration = Duration::from_secs_f64(cfg.duration_s);
    let grace = Duration::from_secs_f64(cfg.grace_s);
    let schedule = Schedule::new(cfg.rate, duration, cfg.users);
    // Let every worker get going before the first send is due.
    let start = Instant::now() + Duration::from_millis(100);
    let server_before = target.server_sample();
    let bench_before = ProcSample::read(None);

    let pairs = cfg.users / 2;
    let workers = cfg.workers.clamp(1, pairs);
    let ctx = Arc::new(RunCtx {
        run: rand::random(),
        body_len: cfg.body_bytes,
        start,
        window_end_ns: duration.as_nanos() as u64,
        grace,
        stop_sending: start + duration + grace,
        hard_deadline: start + duration + grace * 2 + Duration::from_secs(10),
        ack_interval: (cfg.ack_interval_ms > 0).then(|| Duration::from_millis(cfg.ack_interval_ms)),
        settled: tokio::sync::Barrier::new(workers),
        live: Live::default(),
        schedule,
    });

    let mut handles = Vec::with_capacity(workers);
    let mut rest = sockets.into_iter();
    for w in 0..workers {
        let (a, b) = (w * pairs / workers, (w + 1) * pairs / workers);
        let mine: Vec<Socket> = rest.by_ref().take(2 * (b - a)).collect();
        handles.push(tokio::spawn(run_worker(mine, 2 * a, ctx.clone())));
    }

    let run_bar = report::bar(
        bars,
        ctx.schedule.total(),
        "sending {bar:40} {pos}/{len} msgs {msg}",
    );
    let ticker = {
        let (ctx, bar) = (ctx.clone(), run_bar.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                bar.set_position(ctx.live.sent.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "· delivered {} · errors {}",
                    ctx.live.delivered.load(Ordering::Relaxed),
                    ctx.live.errors.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let mut total = WorkerResult::default();
    for h in handles {
        match h.await {
            Ok(r) => total.merge(r),
            Err(e) => bail!("a worker failed: {e}"),
        }
    }
    ticker.abort();
    run_bar.finish_and_clear();

    let server_after = target.server_sample();
    let bench_after = ProcSample::read(None);
    let secs = cfg.duration_s;
    Ok(PairsReport {
        config: cfg.clone(),
        server: target.describe(),
        spawned: target.server.is_some(),
        run_id: ctx.run,
        connect_s,
        replayed,
        scheduled: ctx.schedule.total(),
        sent: total.written,
        unsent: total.unsent,
        acked: total.acked,
        refused: total.refused,
        delivered: total.delivered,
        delivered_in_window: total.delivered_in_window,
        sent_per_sec: total.written as f64 / secs,
        delivered_per_sec: total.delivered as f64 / (total.last_delivery_ns as f64 / 1e9).max(secs),
        last_delivery_s: total.last_delivery_ns as f64 / 1e9,
        undelivered: total.undelivered,
        unacked: total.unacked,
        duplicates: total.duplicates,
        foreign: total.foreign,
        errors: total.errors,
        disconnects: total.disconnects,
        latency_from: LATENCY_FROM.into(),
        latency_ms: LatencySummary::of(&total.latency),
        write_latency_ms: LatencySummary::of(&total.write_latency),
        send_lag_ms: LatencySummary::of(&total.send_lag),
        server_process: match (target.server_pid(), server_before, server_after) {
            (Some(pid), Some(b), Some(a)) => Some(ProcessStats::between(pid, &b, &a)),
            _ => None,
        },
        bench_process: match (bench_before, bench_after) {
            (Some(b), Some(a)) => Some(ProcessStats::between(std::process::id(), &b, &a)),
            _ => None,
        },
    })
}

/// Per-message bookkeeping flags.
const ACKED: u8 = 1;
const ERRORED: u8 = 2;
const RECEIVED: u8 = 4;

/// What one worker measured; merged over workers.
struct WorkerResult {
    written: u64,
    unsent: u64,
    acked: u64,
    refused: u64,
    delivered: u64,
    delivered_in_window: u64,
    /// When the last message arrived, ns after the start.
    last_delivery_ns: u64,
    undelivered: u64,
    unacked: u64,
    duplicates: u64,
    foreign: u64,
    errors: BTreeMap<String, u64>,
    disconnects: BTreeMap<String, u64>,
    latency: Histogram<u64>,
    write_latency: Histogram<u64>,
    send_lag: Histogram<u64>,
}

impl Default for WorkerResult {
    fn default() -> Self {
        WorkerResult {
            written: 0,
            unsent: 0,
            acked: 0,
            refused: 0,
            delivered: 0,
            delivered_in_window: 0,
            last_delivery_ns: 0,
            undelivered: 0,
            unacked: 0,
            duplicates: 0,
            foreign: 0,
            errors: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            latency: stats::histogram(),
            write_latency: stats::histogram(),
            send_lag: stats::histogram(),
        }
    }
}

impl WorkerResult {
    fn merge(&mut self, o: WorkerResult) {
        self.written += o.written;
        self.unsent += o.unsent;
        self.acked += o.acked;
        self.refused += o.refused;
        self.delivered += o.delivered;
        self.delivered_in_window += o.delivered_in_window;
        self.last_delivery_ns = self.last_delivery_ns.max(o.last_delivery_ns);
        self.undelivered += o.undelivered;
        self.unacked += o.unacked;
        self.duplicates += o.duplicates;
        self.foreign += o.foreign;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        for (k, v) in o.disconnects {
            *self.disconnects.entry(k).or_default() += v;
        }
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.write_latency.add(&o.write_latency);
        let _ = self.send_lag.add(&o.send_lag);
    }
}

/// What the sender tells the reader once the schedule is through.
struct SendDone {
    written: u64,
    at: Instant,
}

/// What the sender task measured.
struct SendStats {
    written: u64,
    unsent: u64,
    errors: BTreeMap<String, u64>,
    lag: Histogram<u64>,
}

/// One event from one of a worker's sockets.
enum Incoming {
    Frame(ServerFrame),
    /// The socket closed (close code, if the server sent one).
    Ended(Option<u16>),
    Failed(String),
}

/// A socket's frames as a stream tagged with its index, for multiplexing.
fn frames(idx: usize, rx: ConnectionReceiver) -> impl Stream<Item = (usize, Incoming)> + Send {
    stream::unfold(Some(rx), move |state| async move {
        let mut rx = state?;
        match rx.next().await {
            Ok(Some(f)) => Some(((idx, Incoming::Frame(f)), Some(rx))),
            Ok(None) => {
                let code = rx.close_code();
                Some(((idx, Incoming::Ended(code)), None))
            }
            // A frame it could not parse leaves the socket usable.
            Err(e) if *e.kind() == confab_client::ErrorKind::Protocol => {
                Some(((idx, Incoming::Failed(sdk_reason(&e))), Some(rx)))
            }
            Err(e) => Some(((idx, Incoming::Failed(sdk_reason(&e))), None)),
        }
    })
}

/// One worker: the pairs of `sockets` (users `first_user..`), a sender and a reader.
async fn run_worker(sockets: Vec<Socket>, first_user: usize, ctx: Arc<RunCtx>) -> WorkerResult {
    let n = sockets.len();
    let mut sinks = Vec::with_capacity(n);
    let mut users = Vec::with_capacity(n);
    let mut readers: SelectAll<_> = SelectAll::new();
    for (i, s) in sockets.into_iter().enumerate() {
        sinks.push(s.sender);
        users.push(s.user);
        readers.push(Box::pin(frames(i, s.receiver)));
    }
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let sender = tokio::spawn(send_loop(
        sinks,
        users.clone(),
        first_user,
        ctx.clone(),
        ack_rx,
        done_tx,
    ));
    let mut result = read_loop(readers, users, first_user, &ctx, ack_tx, done_rx).await;
    match sender.await {
        Ok((sinks, stats)) => {
            result.written = stats.written;
            result.unsent = stats.unsent;
            result.send_lag = stats.lag;
            for (k, v) in stats.errors {
                *result.errors.entry(k).or_default() += v;
            }
            result.unacked = result.written.saturating_sub(result.acked + result.refused);
            let closing = futures_util::future::join_all(sinks.into_iter().map(|s| s.close()));
            let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        }
        Err(e) => count(&mut result.errors, &format!("sender task failed: {e}")),
    }
    result
}

/// Walks the worker's part of the schedule and writes each send when it is due; writes the
/// acks the reader asks for. Ends when the schedule is through and the reader hung up.
async fn send_loop(
    mut sinks: Vec<ConnectionSender>,
    users: Vec<Id>,
    first_user: usize,
    ctx: Arc<RunCtx>,
    mut acks: mpsc::UnboundedReceiver<(usize, String)>,
    done: oneshot::Sender<SendDone>,
) -> (Vec<ConnectionSender>, SendStats) {
    let n = sinks.len();
    let mut stats = SendStats {
        written: 0,
        unsent: 0,
        errors: BTreeMap::new(),
        lag: stats::histogram(),
    };
    let mut dead = vec![false; n];
    let mut plan = ctx
        .schedule
        .iter_range(first_user..first_user + n)
        .peekable();
    let mut done = Some(done);
    let mut body = String::with_capacity(ctx.body_len);
    loop {
        let due = plan
            .peek()
            .map(|p| ctx.start + Duration::from_nanos(p.offset_ns));
        if due.is_none()
            && let Some(tx) = done.take()
        {
            let _ = tx.send(SendDone {
                written: stats.written,
                at: Instant::now(),
            });
        }
        tokio::select! {
            biased;
            req = acks.recv() => match req {
                Some((i, cursor)) => {
                    if !dead[i] && let Err(e) = sinks[i].send(&ClientFrame::Ack { cursor }).await {
                        dead[i] = true;
                        count(&mut stats.errors, &format!("write: {}", sdk_reason(&e)));
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(due.unwrap_or(ctx.hard_deadline)), if due.is_some() => {
                if Instant::now() > ctx.stop_sending {
                    stats.unsent += plan.by_ref().count() as u64;
                    continue;
                }
                // Everything due by now goes out in this burst (timers tick per millisecond).
                while let Some(p) = plan.peek().copied() {
                    if ctx.start + Duration::from_nanos(p.offset_ns) > Instant::now() {
                        break;
                    }
                    plan.next();
                    let i = p.sender - first_user;
                    if dead[i] {
                        stats.unsent += 1;
                        continue;
                    }
                    let written_ns = ctx.now_ns();
                    body::encode(
                        &Stamp { run: ctx.run, seq: p.seq, intended_ns: p.offset_ns, written_ns },
                        ctx.body_len,
                        &mut body,
                    );
                    let frame = ClientFrame::Send {
                        to: users[i ^ 1],
                        client_id: body::client_id(ctx.run, p.seq),
                        body: body.clone(),
                    };
                    match sinks[i].send(&frame).await {
                        Ok(()) => {
                            stats.written += 1;
                            ctx.live.sent.fetch_add(1, Ordering::Relaxed);
                            stats::record_ns(&mut stats.lag, written_ns.saturating_sub(p.offset_ns));
                        }
                        Err(e) => {
                            dead[i] = true;
                            stats.unsent += 1;
                            count(&mut stats.errors, &format!("write: {}", sdk_reason(&e)));
                        }
                    }
                }
            }
        }
    }
    // The reader gave up before the schedule was through.
    stats.unsent += plan.count() as u64;
    if let Some(tx) = done.take() {
        let _ = tx.send(SendDone {
            written: stats.written,
            at: Instant::now(),
        });
    }
    (sinks, stats)
}

/// Reads every socket of the worker until each written message is settled (acked or
/// refused) and each acked one was delivered, or the grace period is over.
async fn read_loop<S>(
    mut readers: SelectAll<S>,
    users: Vec<Id>,
    first_user: usize,
    ctx: &RunCtx,
    acks: mpsc::UnboundedSender<(usize, String)>,
    mut done_rx: oneshot::Receiver<SendDone>,
) -> WorkerResult
where
    S: Stream<Item = (usize, Incoming)> + Unpin,
{
    let n = users.len();
    let sched = &ctx.schedule;
    // sent[i][seq]: ACKED / ERRORED for socket i's own sends; recv[i][seq]: RECEIVED for
    // the sends of i's partner (socket i ^ 1).
    let mut sent: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![0; sched.count_for(first_user + i)])
        .collect();
    let mut recv: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![0; sched.count_for(first_user + (i ^ 1))])
        .collect();
    let mut cursor: Vec<Option<String>> = vec![None; n];
    let mut acked_cursor: Vec<Option<String>> = vec![None; n];
    let mut r = WorkerResult::default();
    let mut settled = 0u64;
    // Acked but not yet received by the partner.
    let mut pending = 0u64;
    // The server echoes each message to its sender's devices too. The run waits for those
    // echoes as well, so that the cursor acked at the end covers them and the next run on
    // these accounts does not get them replayed.
    let mut echoes = 0u64;
    let mut done: Option<SendDone> = None;
    // Each connection acks once per interval at its own phase, as independent clients would.
    // Acking all of them on one tick sent the server bursts of hundreds of cursor writes that
    // every message in the same commit waited behind; so did 16 phases per interval (625
    // acks every 62.5 ms with 10,000 connections). A phase per millisecond spreads them out.
    let phases = ack_phases(ctx.ack_interval);
    let mut ack_tick = tokio::time::interval(
        ctx.ack_interval.unwrap_or(Duration::from_secs(3600)) / phases as u32,
    );
    let mut ack_phase = 0usize;
    ack_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let window_end = ctx.start + Duration::from_nanos(ctx.window_end_ns);

    loop {
        if let Some(d) = &done
            && ((settled == d.written && pending == 0 && echoes >= r.acked) || readers.is_empty())
        {
            break;
        }
        let deadline = match &done {
            Some(d) => (d.at.max(window_end) + ctx.grace).min(ctx.hard_deadline),
            None => ctx.hard_deadline,
        };
        tokio::select! {
            biased;
            d = &mut done_rx, if done.is_none() => match d {
                Ok(d) => done = Some(d),
                Err(_) => break,
            },
            Some((i, incoming)) = readers.next(), if !readers.is_empty() => match incoming {
                Incoming::Frame(ServerFrame::Sent { client_id, .. }) => {
                    if let Some((run, seq)) = body::parse_client_id(&client_id)
                        && run == ctx.run
                        && let Some(st) = sent[i].get_mut(seq as usize)
                    {
                        if *st & (ACKED | ERRORED) == 0 {
                            settled += 1;
                        }
                        if *st & ACKED == 0 {
                            *st |= ACKED;
                            r.acked += 1;
                            if recv[i ^ 1][seq as usize] & RECEIVED == 0 {
                                pending += 1;
                            }
                        }
                    }
                }
                Incoming::Frame(ServerFrame::Message { message, cursor: c }) => {
                    cursor[i] = Some(c);
                    if message.from == users[i] {
                        if body::decode(&message.body).is_some_and(|s| s.run == ctx.run) {
                            echoes += 1;
                        }
                        continue;
                    }
                    let stamp = body::decode(&message.body)
                        .filter(|s| s.run == ctx.run && message.from == users[i ^ 1]);
                    let Some(stamp) = stamp else {
                        r.foreign += 1;
                        continue;
                    };
                    let seq = stamp.seq as usize;
                    let Some(flag) = recv[i].get_mut(seq) else {
                        r.foreign += 1;
                        continue;
                    };
                    if *flag & RECEIVED != 0 {
                        r.duplicates += 1;
                        continue;
                    }
                    *flag |= RECEIVED;
                    if sent[i ^ 1][seq] & ACKED != 0 {
                        pending -= 1;
                    }
                    let now_ns = ctx.now_ns();
                    r.delivered += 1;
                    r.last_delivery_ns = r.last_delivery_ns.max(now_ns);
                    if now_ns <= ctx.window_end_ns {
                        r.delivered_in_window += 1;
                    }
                    ctx.live.delivered.fetch_add(1, Ordering::Relaxed);
                    stats::record_ns(&mut r.latency, now_ns.saturating_sub(stamp.intended_ns));
                    stats::record_ns(&mut r.write_latency, now_ns.saturating_sub(stamp.written_ns));
                }
                Incoming::Frame(ServerFrame::Error { code, reference, .. }) => {
                    count(&mut r.errors, code.as_str());
                    ctx.live.errors.fetch_add(1, Ordering::Relaxed);
                    if let Some((run, seq)) = reference.as_deref().and_then(body::parse_client_id)
                        && run == ctx.run
                        && let Some(st) = sent[i].get_mut(seq as usize)
                        && *st & (ACKED | ERRORED) == 0
                    {
                        *st |= ERRORED;
                        settled += 1;
                        r.refused += 1;
                    }
                }
                Incoming::Frame(_) => {}
                Incoming::Ended(code) => {
                    let key = code.map_or("no close frame".to_owned(), |c| format!("close {c}"));
                    count(&mut r.disconnects, &key);
                }
                Incoming::Failed(reason) => count(&mut r.disconnects, &reason),
            },
            _ = ack_tick.tick(), if ctx.ack_interval.is_some() => {
                request_acks(&cursor, &mut acked_cursor, &acks, Some((ack_phase, phases)));
                ack_phase = (ack_phase + 1) % phases;
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let _ = tokio::time::timeout_at(ctx.hard_deadline, ctx.settled.wait()).await;
    // Ack what was read, so a later run on these accounts does not replay it.
    request_acks(&cursor, &mut acked_cursor, &acks, None);
    drop(acks);

    for i in 0..n {
        for (seq, st) in sent[i].iter().enumerate() {
            if st & ACKED != 0 && recv[i ^ 1][seq] & RECEIVED == 0 {
                r.undelivered += 1;
            }
        }
    }
    r
}

/// What a `message` frame adds to its body: ids, conversation, seq, ts, cursor, keys.
const MESSAGE_FRAME_OVERHEAD: usize = 512;

/// Bytes each socket reads at a time: room for one of this run's `message` frames. tungstenite
/// zeroes the whole buffer before every read, and the generator's 10,000 sockets mostly get
/// one frame per read, so the SDK's 8 KiB (sized for catch-up bursts) cost the generator ~5 %
/// of its CPU in `memset` alone.
fn read_buffer_for(body_bytes: usize) -> usize {
    (body_bytes + MESSAGE_FRAME_OVERHEAD).next_power_of_two()
}

/// Ack phases per ack interval: one per millisecond of it (at least one). Connection `i`
/// acks in phase `i % phases`.
fn ack_phases(interval: Option<Duration>) -> usize {
    interval.map_or(1, |d| d.as_millis().clamp(1, 60_000) as usize)
}

/// Asks the sender to ack the latest cursor of each socket (of those in phase `p` of
/// `phases`, if given) that has not been acked yet.
fn request_acks(
    cursor: &[Option<String>],
    acked: &mut [Option<String>],
    acks: &mpsc::UnboundedSender<(usize, String)>,
    phase: Option<(usize, usize)>,
) {
    let (first, step) = phase.unwrap_or((0, 1));
    for i in (first..cursor.len()).step_by(step.max(1)) {
        if let Some(c) = &cursor[i]
            && acked[i].as_ref() != Some(c)
        {
            let _ = acks.send((i, c.clone()));
            acked[i] = Some(c.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_go_out_by_phase_and_once_per_cursor() {
        const PHASES: usize = 16;
        let n = 2 * PHASES;
        let cursor: Vec<Option<String>> = (0..n).map(|i| Some(i.to_string())).collect();
        let mut acked = vec![None; n];
        let (tx, mut rx) = mpsc::unbounded_channel();
        request_acks(&cursor, &mut acked, &tx, Some((3, PHASES)));
        let mut sent = Vec::new();
        while let Ok((i, _)) = rx.try_recv() {
            sent.push(i);
        }
        assert_eq!(sent, [3, 3 + PHASES]);
        // The final sweep acks everyone not acked yet, and nobody twice.
        request_acks(&cursor, &mut acked, &tx, None);
        let mut rest = Vec::new();
        while let Ok((i, c)) = rx.try_recv() {
            assert_eq!(c, i.to_string());
            rest.push(i);
        }
        assert_eq!(rest.len(), n - 2);
        assert!(!rest.contains(&3) && !rest.contains(&(3 + PHASES)));
        request_acks(&cursor, &mut acked, &tx, None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_socket_reads_one_message_frame_at_a_time() {
        assert_eq!(read_buffer_for(100), 1024);
        assert_eq!(read_buffer_for(4096), 8192);
        // The largest body the protocol allows still fits, frame and all.
        assert!(read_buffer_for(4096) >= 4096 + MESSAGE_FRAME_OVERHEAD);
    }

    #[test]
    fn a_phase_per_millisecond_of_the_ack_interval() {
        assert_eq!(ack_phases(Some(Duration::from_secs(1))), 1000);
        assert_eq!(ack_phases(Some(Duration::from_micros(300))), 1);
        assert_eq!(ack_phases(Some(Duration::from_secs(3600))), 60_000);
        assert_eq!(ack_phases(None), 1);
    }

    fn load(users: usize) -> LoadArgs {
        LoadArgs {
            users,
            duration: 2.0,
            body: 100,
            grace: 1.0,
            workers: Some(4),
            ack_interval: 1000,
            connect_concurrency: 8,
        }
    }

    #[test]
    fn config_bounds_the_run() {
        let c = load(10).config(100.0).unwrap();
        assert_eq!(c.users, 10);
        assert_eq!(c.workers, 4);
        assert_eq!(
            load(4).config(100.0).unwrap().workers,
            2,
            "at most one worker per pair"
        );
        assert!(load(3).config(100.0).is_err(), "odd");
        assert!(load(0).config(100.0).is_err());
        assert!(load(10).config(0.0).is_err());
        assert!(load(10).config(f64::NAN).is_err());
        assert!(load(10).config(1e9).is_err(), "too many messages");
        let mut l = load(10);
        l.body = 47;
        assert!(l.config(10.0).is_err());
        l.body = 4097;
        assert!(l.config(10.0).is_err());
        l = load(10);
        l.duration = 4000.0;
        assert!(l.config(10.0).is_err());
    }

    #[test]
    fn limit_notes_name_the_server_flags() {
        let c = load(10).config(1000.0).unwrap(); // 100 msgs/s per user
        let notes = c.limit_notes(None);
        assert!(notes.iter().any(|n| n.contains("--send-rate")), "{notes:?}");
        assert!(c.limit_notes(Some(1e6)).is_empty());
        let fast = load(2).config(1000.0).unwrap(); // 500 per user: over the frame limit
        assert!(
            fast.limit_notes(None)
                .iter()
                .any(|n| n.contains("200 frames/s") && n.contains("--frame-rate"))
        );
        assert!(
            !fast
                .limit_notes(Some(1e6))
                .iter()
                .any(|n| n.contains("frames/s")),
            "a spawned server's frame limit is raised with its send limit"
        );
        let slow = load(100).config(10.0).unwrap(); // 20 messages for 100 users
        assert!(
            slow.limit_notes(Some(1e6))
                .iter()
                .any(|n| n.contains("never send"))
        );
    }

    #[test]
    fn report_round_trips_through_json() {
        let mut report = PairsReport {
            config: load(4).config(200.0).unwrap(),
            server: "ws://127.0.0.1:1/v1/ws".into(),
            run_id: 42,
            scheduled: 400,
            sent: 400,
            acked: 399,
            delivered: 399,
            latency_from: LATENCY_FROM.into(),
            ..Default::default()
        };
        report.errors.insert("rate_limited".into(), 1);
        report.latency_ms.p99_ms = 12.5;
        report.server_process = Some(ProcessStats {
            pid: 9,
            cpu_pct: 50.0,
            disk_written_mib: Some(3.9),
            ..Default::default()
        });
        let json = serde_json::to_string(&report).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["latency_ms"]["p99_ms"], 12.5);
        assert_eq!(v["errors"]["rate_limited"], 1);
        assert_eq!(v["config"]["users"], 4);
        let back: PairsReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let table = report.to_string();
        assert!(table.contains("rate_limited: 1"), "{table}");
        assert!(table.contains("intended"), "{table}");
        // 3.9 MiB over 399 messages.
        assert!(
            table.contains("3.9 MiB written toward the disk: 10.0 KiB per message"),
            "{table}"
        );
        // A report from before the disk figure still reads.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        old["server_process"]
            .as_object_mut()
            .unwrap()
            .remove("disk_written_mib");
        let back: PairsReport = serde_json::from_value(old).unwrap();
        assert_eq!(back.server_process.unwrap().disk_written_mib, None);
    }
}
