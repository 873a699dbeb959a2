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
//!
//! `group` runs on the same engine: its own [`Ledger`] of what was acked and received, and
//! its own [`Route`] from a planned send to a socket and a conversation.

mod config;
mod ctx;
mod ledger;
mod read;
mod result;
mod run;
mod send;
mod summary;

pub use config::PairsConfig;
pub(crate) use config::{MAX_USERS, Pace, limit_notes};
pub(crate) use ctx::{RunCtx, Socket};
pub(crate) use read::{ACKED, Ledger, SendState};
pub(crate) use result::WorkerResult;
pub use run::run_pairs;
pub(crate) use run::{ProcWindow, connect_all, drive, run_worker};
pub(crate) use send::Route;
pub use summary::PairsReport;
pub(crate) use summary::{disk_line, process_line};

use crate::report;
use crate::target::Target;

/// How the load is shaped: shared by `pairs` and `sweep`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Users (one connection each), paired 0↔1, 2↔3, …: an even number.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub users: usize,
    #[command(flatten)]
    pub pace: PaceArgs,
}

/// How an open-loop run is paced and read: shared by `pairs`, `sweep` and `group`.
#[derive(clap::Args, Clone, Debug)]
pub struct PaceArgs {
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
    /// Connections opened at once while connecting (at most 128: a server's default cap
    /// on plain-HTTP connections from one address).
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
