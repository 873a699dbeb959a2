//! `confab bench group`: G groups of M members each, N of them online; the online members of
//! each group take turns sending to it on an open-loop schedule, and every online member's
//! socket reads every message of its group (its sender's own included). Measures the
//! server's fan-out: deliveries to devices per second, end-to-end latency at the receivers,
//! and the server's CPU and writes per message.
//!
//! It runs on `pairs`' engine (the schedule, the workers' sender and reader tasks, acks,
//! progress and process readings): the schedule's senders are the groups, so consecutive sends
//! go to different groups and each group gets `rate / G`; a group's k-th send is written by
//! its online member `k mod N`. Each worker owns whole groups, so that every delivery of a
//! message is counted where it was sent.

mod config;
mod ledger;
mod run;
mod setup;
mod summary;

pub use config::GroupConfig;
pub use run::run_group;
pub use summary::GroupReport;

use crate::pairs::PaceArgs;
use crate::report::{self, OutputArgs};
use crate::target::{Target, TargetArgs};

/// `confab bench group`.
#[derive(clap::Args, Clone, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Groups.
    #[arg(long, short = 'g', default_value_t = 10)]
    pub groups: usize,
    /// Members of each group, its owner included; every member is a user of its own, so the
    /// run needs groups × members accounts. A server holds at most 1,024 per group unless
    /// started with more (`serve --max-group-members`; --spawn does that for larger groups).
    #[arg(long, short = 'm', default_value_t = 10)]
    pub members: usize,
    /// Members of each group that hold a socket, and so send to it and read it; the rest
    /// only have the group's messages stored for them [default: all of them].
    #[arg(long)]
    pub online: Option<usize>,
    /// Offered load: messages per second over all groups together.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    #[command(flatten)]
    pub pace: PaceArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `confab bench group`: sets up the target, runs, prints.
pub async fn main(args: GroupArgs) -> anyhow::Result<bool> {
    args.target.one_server("group")?;
    let cfg = GroupConfig::check(&args).map_err(|e| anyhow::Error::new(crate::UsageError(e)))?;
    let mut target_args = args.target.clone();
    if target_args.spawn && cfg.members > config::SERVER_MAX_GROUP_MEMBERS {
        target_args
            .serve_args
            .push(format!("--max-group-members={}", cfg.members));
    }
    let spawned_rate = target_args.spawn.then_some(target_args.server_send_rate);
    for n in cfg.limit_notes(spawned_rate) {
        report::note(n);
    }
    crate::target::ensure_fd_budget(cfg.sockets())?;
    let target = Target::prepare(&target_args, cfg.users()).await?;
    let result = run_group(&target, &cfg, args.output.bars()).await;
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    if report.undelivered > 0 {
        report::note(format!(
            "{} deliveries of acked messages did not arrive within the {} s grace period \
             (latency p99.9 {}); a longer --grace tells lateness from loss",
            report.undelivered,
            cfg.grace_s,
            crate::stats::fmt_ms(report.latency_ms.p999_ms)
        ));
    }
    Ok(report.undelivered == 0)
}
