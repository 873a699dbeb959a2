//! `confab bench push`: the push server's throughput, latency and cost. S senders with
//! sockets send on an open-loop schedule, message `k` to recipient `k mod N`, so that
//! consecutive messages go to different devices; the N recipients never connect, and each
//! has one device subscribed to Web Push at an endpoint of the bench's own receiver
//! (`receiver.rs`), which counts what arrives and decrypts a sample.
//!
//! Two phases, on the same server: a **baseline**, the same load to N other recipients
//! without a subscription, and the **push** phase. The server's CPU and writes per message in
//! each, side by side, give what a subscription adds to a message's cost. The push phase
//! also reports the notifications delivered per second, their latency from the message's
//! intended send time to the arrival at the receiver, and the push server's own counters
//! (sent, coalesced, dropped, failed) from its `/metrics`.
//!
//! It runs on `pairs`' engine (the schedule, the workers' sender and reader tasks, acks,
//! progress and process readings), with a [`ledger::PushLedger`] of the senders' messages.

mod config;
mod ledger;
mod matching;
mod metrics;
mod phase;
mod receiver;
mod run;
mod setup;
mod summary;

pub use config::PushConfig;
pub use matching::Notifications;
pub use metrics::PushCounters;
pub use phase::PhaseReport;
pub use run::run_push;
pub use summary::PushReport;

use crate::pairs::PaceArgs;
use crate::report::{self, OutputArgs};
use crate::target::{Target, TargetArgs};

/// `confab bench push`.
#[derive(clap::Args, Clone, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Senders: users with a socket, taking turns.
    #[arg(long, default_value_t = 100)]
    pub senders: usize,
    /// Recipients: users with one device subscribed to Web Push and no socket; message k
    /// goes to recipient k mod N. The baseline uses as many again, without a subscription.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub recipients: usize,
    /// Offered load: messages per second over all senders together.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    #[command(flatten)]
    pub pace: PaceArgs,
    /// Seconds after the schedule's end to wait for the notifications.
    #[arg(long, default_value_t = 60.0)]
    pub push_wait: f64,
    /// Decrypt every this-many-th notification and check it is a message of the run to its
    /// device (each costs the bench an elliptic-curve multiplication). A phase of at most
    /// 1,000 messages decrypts them all.
    #[arg(long, default_value_t = 100)]
    pub decrypt_every: u64,
    /// Only the push phase: no baseline to set its costs beside.
    #[arg(long)]
    pub no_baseline: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `confab bench push`: sets up the target, runs, prints.
pub async fn main(args: PushArgs) -> anyhow::Result<bool> {
    args.target.one_server("push")?;
    if args.target.relay {
        return Err(anyhow::Error::new(crate::UsageError(
            "`push` measures confab's push server; the relay has none".into(),
        )));
    }
    let cfg = PushConfig::check(&args).map_err(|e| anyhow::Error::new(crate::UsageError(e)))?;
    let mut target_args = args.target.clone();
    if target_args.spawn {
        // The receiver is on 127.0.0.1, over plain http.
        target_args.serve_args.push("--push-allow-private".into());
    }
    let spawned_rate = target_args.spawn.then_some(target_args.server_send_rate);
    for n in cfg.limit_notes(spawned_rate) {
        report::note(n);
    }
    crate::target::ensure_fd_budget(cfg.senders)?;
    let target = Target::prepare(&target_args, cfg.users()).await?;
    let result = run_push(&target, &cfg, args.output.bars()).await;
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    let passed = report.passed();
    if !passed && let Some(n) = &report.push.notifications {
        report::note(format!(
            "{} of {} notifications arrived ({} coalesced, {} dropped by the server, {} bad \
             payloads){}",
            n.arrived,
            n.expected,
            report.push.push_counters.coalesced,
            report.push.push_counters.dropped,
            n.bad.values().sum::<u64>(),
            if n.complete {
                ""
            } else {
                "; the wait ran out: a longer --push-wait tells lateness from loss"
            }
        ));
    }
    Ok(passed)
}
