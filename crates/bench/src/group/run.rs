//! Runs `group`: creates the groups, connects their online members, spreads whole groups over
//! workers, and merges what the workers measured into the report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::GroupConfig;
use super::ledger::GroupLedger;
use super::setup::{create_groups, members_of};
use super::summary::GroupReport;
use crate::pairs::{ProcWindow, Route, RunCtx, Socket, connect_all, drive, run_worker};
use crate::schedule::{Planned, Schedule};
use crate::stats::LatencySummary;
use crate::target::{SeededAccount, Target};

/// Runs `group` against `target` (its first `cfg.users()` accounts).
pub async fn run_group(
    target: &Target,
    cfg: &GroupConfig,
    bars: bool,
) -> anyhow::Result<GroupReport> {
    if target.accounts.len() < cfg.users() {
        bail!(
            "{} accounts for {} groups of {} members",
            target.accounts.len(),
            cfg.groups,
            cfg.members
        );
    }
    let groups = create_groups(target, cfg, bars).await?;
    // The first `online` members of each group, group by group.
    let online: Vec<SeededAccount> = (0..cfg.groups)
        .flat_map(|g| {
            members_of(cfg, &target.accounts, g)[..cfg.online]
                .iter()
                .cloned()
        })
        .collect();
    let connected = connect_all(
        target,
        &online,
        cfg.connect_concurrency,
        cfg.body_bytes,
        bars,
    )
    .await?;

    let pace = cfg.pace();
    // The schedule's senders are the groups: send k goes to group k mod G.
    let schedule = Schedule::new(
        cfg.rate,
        Duration::from_secs_f64(cfg.duration_s),
        cfg.groups,
    );
    let window = ProcWindow::open(target);
    let workers = cfg.workers.clamp(1, cfg.groups);
    let ctx = Arc::new(RunCtx::new(schedule, &pace, workers));

    let mut handles = Vec::with_capacity(workers);
    let mut rest = connected.sockets.into_iter();
    for w in 0..workers {
        let (a, b) = (w * cfg.groups / workers, (w + 1) * cfg.groups / workers);
        let mine: Vec<Socket> = rest.by_ref().take((b - a) * cfg.online).collect();
        let conversations = groups.conversations[a..b].to_vec();
        let ledger = GroupLedger::new(conversations.clone(), a, cfg.online, &ctx.schedule);
        let online = cfg.online;
        let route = move |p: &Planned| {
            let g = p.sender - a;
            Route {
                socket: g * online + p.seq as usize % online,
                to: None,
                conversation: Some(conversations[g].clone()),
            }
        };
        handles.push(tokio::spawn(run_worker(
            mine,
            a..b,
            route,
            ledger,
            ctx.clone(),
        )));
    }
    let total = drive(&ctx, handles, bars).await?;
    let (server_process, bench_process) = window.close(target);

    let secs = cfg.duration_s;
    let delivery_secs = (total.last_delivery_ns as f64 / 1e9).max(secs);
    Ok(GroupReport {
        config: cfg.clone(),
        server: target.describe(),
        spawned: target.server.is_some(),
        run_id: ctx.run,
        setup_s: groups.setup_s,
        connect_s: connected.connect_s,
        replayed: connected.replayed,
        scheduled: ctx.schedule.total(),
        sent: total.written,
        unsent: total.unsent,
        acked: total.acked,
        refused: total.refused,
        expected: total.acked * cfg.online as u64,
        delivered: total.delivered,
        delivered_in_window: total.delivered_in_window,
        sent_per_sec: total.written as f64 / secs,
        delivered_per_sec: total.delivered as f64 / delivery_secs,
        last_delivery_s: total.last_delivery_ns as f64 / 1e9,
        undelivered: total.undelivered,
        unacked: total.unacked,
        duplicates: total.duplicates,
        foreign: total.foreign,
        errors: total.errors,
        disconnects: total.disconnects,
        latency_ms: LatencySummary::of(&total.latency),
        write_latency_ms: LatencySummary::of(&total.write_latency),
        ack_latency_ms: LatencySummary::of(&total.ack_latency),
        send_lag_ms: LatencySummary::of(&total.send_lag),
        server_process,
        bench_process,
    })
}
