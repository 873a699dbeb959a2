//! Runs `pairs`: connects every socket, spreads the pairs over workers, and merges what the
//! workers measured into the report. The pieces `group` runs on too are here: connecting,
//! the worker, waiting for the workers, the process readings around a run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use confab_client::Id;
use futures_util::stream::{self, SelectAll, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::PairsConfig;
use super::ctx::{RunCtx, Socket};
use super::ledger::PairsLedger;
use super::read::{Ledger, frames, read_loop};
use super::result::WorkerResult;
use super::send::{Route, send_loop};
use super::summary::{LATENCY_FROM, PairsReport};
use crate::connect::{connect_synced, count};
use crate::report::{self, fmt_counts};
use crate::schedule::{Planned, Schedule};
use crate::stats::{LatencySummary, ProcSample, ProcessStats};
use crate::target::{SeededAccount, Target};

/// Runs `pairs` against `target` (its first `cfg.users` accounts).
pub async fn run_pairs(
    target: &Target,
    cfg: &PairsConfig,
    bars: bool,
) -> anyhow::Result<PairsReport> {
    if target.accounts.len() < cfg.users {
        bail!("{} accounts for {} users", target.accounts.len(), cfg.users);
    }
    // Connect everything first, so that connecting is not part of the measured run.
    let connected = connect_all(
        target,
        &target.accounts[..cfg.users],
        cfg.connect_concurrency,
        cfg.body_bytes,
        bars,
    )
    .await?;

    let pace = cfg.pace();
    let schedule = Schedule::new(cfg.rate, Duration::from_secs_f64(cfg.duration_s), cfg.users);
    let window = ProcWindow::open(target);
    let pairs = cfg.users / 2;
    let workers = cfg.workers.clamp(1, pairs);
    let ctx = Arc::new(RunCtx::new(schedule, &pace, workers));

    let mut handles = Vec::with_capacity(workers);
    let mut rest = connected.sockets.into_iter();
    for w in 0..workers {
        let (a, b) = (w * pairs / workers, (w + 1) * pairs / workers);
        let mine: Vec<Socket> = rest.by_ref().take(2 * (b - a)).collect();
        let first = 2 * a;
        let users: Vec<Id> = mine.iter().map(|s| s.user).collect();
        let ledger = PairsLedger::new(users.clone(), first, &ctx.schedule);
        let route = move |p: &Planned| {
            let socket = p.sender - first;
            Route {
                socket,
                to: Some(users[socket ^ 1]),
                conversation: None,
            }
        };
        let range = first..first + mine.len();
        handles.push(tokio::spawn(run_worker(
            mine,
            range,
            route,
            ledger,
            ctx.clone(),
        )));
    }
    let total = drive(&ctx, handles, bars).await?;
    let (server_process, bench_process) = window.close(target);

    let secs = cfg.duration_s;
    Ok(PairsReport {
        config: cfg.clone(),
        server: target.describe(),
        spawned: target.server.is_some(),
        run_id: ctx.run,
        connect_s: connected.connect_s,
        replayed: connected.replayed,
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
        ack_latency_ms: LatencySummary::of(&total.ack_latency),
        server_process,
        bench_process,
    })
}

/// The sockets of a run, past `synced`, in the order of their accounts.
pub(crate) struct Connected {
    pub(crate) sockets: Vec<Socket>,
    /// Old messages replayed to them on connect.
    pub(crate) replayed: u64,
    /// Seconds it took.
    pub(crate) connect_s: f64,
}

/// Connects a socket for each of `accounts` (the k-th to `target.ws_url_for(k)`), at most
/// `concurrency` at once, each read in buffers sized for `body_bytes`; fails if any fails.
pub(crate) async fn connect_all(
    target: &Target,
    accounts: &[SeededAccount],
    concurrency: usize,
    body_bytes: usize,
    bars: bool,
) -> anyhow::Result<Connected> {
    let connect_bar = report::bar(
        bars,
        accounts.len() as u64,
        "connecting {bar:40} {pos}/{len} sockets ({per_sec})",
    );
    let read_buffer = read_buffer_for(body_bytes);
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
            .buffered(concurrency)
            .collect()
            .await;
    connect_bar.finish_and_clear();
    let connect_s = t0.elapsed().as_secs_f64();
    let mut failures = BTreeMap::new();
    let mut sockets = Vec::with_capacity(accounts.len());
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
            accounts.len() - sockets.len(),
            accounts.len(),
            fmt_counts(&failures)
        );
    }
    Ok(Connected {
        sockets,
        replayed,
        connect_s,
    })
}

/// Waits for the workers, showing their live counters, and merges what they measured.
pub(crate) async fn drive(
    ctx: &Arc<RunCtx>,
    handles: Vec<tokio::task::JoinHandle<WorkerResult>>,
    bars: bool,
) -> anyhow::Result<WorkerResult> {
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
    let mut failed = None;
    for h in handles {
        match h.await {
            Ok(r) => total.merge(r),
            Err(e) => failed = Some(e),
        }
    }
    ticker.abort();
    run_bar.finish_and_clear();
    if let Some(e) = failed {
        bail!("a worker failed: {e}");
    }
    Ok(total)
}

/// CPU, memory and disk writes of the spawned server and of this process between two
/// readings: the measured window of a run.
pub(crate) struct ProcWindow {
    server: Option<ProcSample>,
    bench: Option<ProcSample>,
}

impl ProcWindow {
    pub(crate) fn open(target: &Target) -> ProcWindow {
        ProcWindow {
            server: target.server_sample(),
            bench: ProcSample::read(None),
        }
    }

    /// The server's (with `--spawn`) and this process's stats since [`ProcWindow::open`].
    pub(crate) fn close(self, target: &Target) -> (Option<ProcessStats>, Option<ProcessStats>) {
        let server = match (target.server_pid(), self.server, target.server_sample()) {
            (Some(pid), Some(b), Some(a)) => Some(ProcessStats::between(pid, &b, &a)),
            _ => None,
        };
        let bench = match (self.bench, ProcSample::read(None)) {
            (Some(b), Some(a)) => Some(ProcessStats::between(std::process::id(), &b, &a)),
            _ => None,
        };
        (server, bench)
    }
}

/// One worker: `sockets`, the schedule's `senders` whose sends `route` puts on them, and the
/// `ledger` of what they sent and read; a sender task and a reader.
pub(crate) async fn run_worker<L: Ledger>(
    sockets: Vec<Socket>,
    senders: Range<usize>,
    route: impl Fn(&Planned) -> Route + Send + 'static,
    ledger: L,
    ctx: Arc<RunCtx>,
) -> WorkerResult {
    let n = sockets.len();
    let mut sinks = Vec::with_capacity(n);
    let mut readers: SelectAll<_> = SelectAll::new();
    for (i, s) in sockets.into_iter().enumerate() {
        sinks.push(s.sender);
        readers.push(Box::pin(frames(i, s.receiver)));
    }
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let sender = tokio::spawn(send_loop(
        sinks,
        senders,
        route,
        ctx.clone(),
        ack_rx,
        done_tx,
    ));
    let mut result = read_loop(readers, ledger, &ctx, ack_tx, done_rx).await;
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

/// What a `message` frame adds to its body: ids, conversation, seq, ts, cursor, keys.
const MESSAGE_FRAME_OVERHEAD: usize = 512;

/// Bytes each socket reads at a time: room for one of this run's `message` frames. tungstenite
/// zeroes the whole buffer before every read, and the generator's 10,000 sockets mostly get
/// one frame per read, so the SDK's 8 KiB (sized for catch-up bursts) cost the generator ~5 %
/// of its CPU in `memset` alone.
fn read_buffer_for(body_bytes: usize) -> usize {
    (body_bytes + MESSAGE_FRAME_OVERHEAD).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_reads_one_message_frame_at_a_time() {
        assert_eq!(read_buffer_for(100), 1024);
        assert_eq!(read_buffer_for(4096), 8192);
        // The largest body the protocol allows still fits, frame and all.
        assert!(read_buffer_for(4096) >= 4096 + MESSAGE_FRAME_OVERHEAD);
    }
}
