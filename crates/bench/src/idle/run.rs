//! Runs `idle`: spreads the sockets over this process or child processes, follows the
//! connecting, holds, measures memory, and lets go.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

use super::IdleArgs;
use super::holder::Holder;
use super::share::{Live, open_share};
use super::summary::IdleReport;
use super::worker::{ChildShare, spawn_worker};
use crate::connect::{SourcePlan, ephemeral_ports};
use crate::report;
use crate::stats::{ProcSample, ProcessStats};
use crate::target::Target;

/// A share of the sockets: held here or by a child process.
enum Share {
    Local(Holder),
    Child(Box<ChildShare>),
}

/// Opens `args.connections` sockets to `target` (over `processes` processes), holds them,
/// measures, and lets go.
pub(crate) async fn run_idle(
    target: &Target,
    args: &IdleArgs,
    plan: SourcePlan,
    processes: usize,
    hold: Duration,
    timeout: Duration,
) -> anyhow::Result<IdleReport> {
    let n = args.connections;
    // Binding to 127.0.0.x only makes sense towards an IPv4 server.
    let plan = target.addr.is_ipv4().then_some(plan);
    if plan.is_none()
        && n > SourcePlan::for_port_range(args.source_base, ephemeral_ports()).per_address
    {
        bail!("{n} sockets need several source addresses, which only works with an IPv4 server");
    }
    let spread = plan.map(|p| p.spread(0, n)).unwrap_or_default();
    let source_addresses = spread.len().max(1);
    let source_range = match (spread.first(), spread.last()) {
        (Some((a, _)), Some((b, _))) if a != b => format!("{a}-{b}"),
        (Some((a, _)), _) => a.to_string(),
        _ => "unbound".to_owned(),
    };
    let bar = report::bar(
        args.output.bars(),
        n as u64,
        "connecting {bar:40} {pos}/{len} sockets ({per_sec}) {msg}",
    );
    let server_before = target.server_sample();
    let t0 = Instant::now();
    let deadline = t0 + timeout;

    let local_live = Arc::new(Live::default());
    let mut shares = Vec::with_capacity(processes);
    let mut local_errors = None;
    if processes == 1 {
        let holder = Holder::start();
        let (live, bar2) = (local_live.clone(), bar.clone());
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar2.set_position(
                    live.connected.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed),
                );
            }
        });
        let errors = open_share(
            target.addr,
            target.ws_url(),
            &target.accounts[..n],
            0,
            plan,
            args.concurrency,
            deadline,
            &local_live,
            &holder,
        )
        .await;
        ticker.abort();
        local_errors = Some(errors);
        shares.push(Share::Local(holder));
    } else {
        let accounts_file = target
            .accounts_file
            .clone()
            .context("spreading over processes needs the accounts in a file")?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        for p in 0..processes {
            let (a, b) = (p * n / processes, (p + 1) * n / processes);
            shares.push(Share::Child(Box::new(spawn_worker(
                &exe,
                target,
                &accounts_file,
                a,
                b - a,
                plan,
                args,
            )?)));
        }
        // Follow the children's progress until each is ready.
        loop {
            let (mut done, mut all_ready) = (0, true);
            for s in &shares {
                if let Share::Child(c) = s {
                    let (live, ready) = (&c.live, &c.ready);
                    done += live.connected.load(Ordering::Relaxed)
                        + live.failed.load(Ordering::Relaxed);
                    all_ready &= ready.as_ref().is_none_or(|r| !r.is_empty());
                }
            }
            bar.set_position(done);
            if all_ready {
                break;
            }
            if Instant::now() > deadline + Duration::from_secs(30) {
                bar.finish_and_clear();
                bail!("the worker processes did not finish connecting in time");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let mut errors = local_errors.unwrap_or_default();
    let (mut connected, mut failed) = (
        local_live.connected.load(Ordering::Relaxed),
        local_live.failed.load(Ordering::Relaxed),
    );
    for s in &mut shares {
        if let Share::Child(c) = s {
            connected += c.live.connected.load(Ordering::Relaxed);
            failed += c.live.failed.load(Ordering::Relaxed);
            if let Some(r) = c.ready.take() {
                for (k, v) in r.await.unwrap_or_default() {
                    *errors.entry(k).or_default() += v;
                }
            }
        }
    }

    tokio::time::sleep(hold).await;
    let server_after = target.server_sample();
    let mut client_kib = ProcSample::read(None).map_or(0, |s| s.rss_kib);
    for s in &shares {
        if let Share::Child(c) = s
            && let Some(sample) = c.child.id().and_then(|pid| ProcSample::read(Some(pid)))
        {
            client_kib += sample.rss_kib;
        }
    }

    // Let go of everything, counting sockets that had closed while held.
    let mut dropped = 0;
    for s in shares {
        match s {
            Share::Local(holder) => dropped += holder.stop().await,
            Share::Child(c) => {
                let ChildShare {
                    mut child,
                    stdin,
                    bye,
                    ..
                } = *c;
                drop(stdin);
                dropped += tokio::time::timeout(Duration::from_secs(30), bye)
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0);
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }

    let per_conn = |kib: f64| {
        if connected > 0 {
            kib / connected as f64
        } else {
            0.0
        }
    };
    let (server_rss_before_mib, server_rss_after_mib, server_kib_per_connection, server_process) =
        match (target.server_pid(), server_before, server_after) {
            (Some(pid), Some(b), Some(a)) => (
                Some(b.rss_kib as f64 / 1024.0),
                Some(a.rss_kib as f64 / 1024.0),
                Some(per_conn(a.rss_kib as f64 - b.rss_kib as f64)),
                Some(ProcessStats::between(pid, &b, &a)),
            ),
            _ => (None, None, None, None),
        };
    Ok(IdleReport {
        server: target.describe(),
        spawned: target.server.is_some(),
        requested: n as u64,
        connected,
        failed,
        errors,
        connect_s,
        connect_per_sec: connected as f64 / connect_s.max(1e-9),
        processes,
        source_addresses,
        source_range,
        per_address: plan.map_or(n, |p| p.per_address),
        hold_s: hold.as_secs_f64(),
        dropped,
        server_rss_before_mib,
        server_rss_after_mib,
        server_kib_per_connection,
        server_process,
        client_rss_mib: client_kib as f64 / 1024.0,
        client_kib_per_connection: per_conn(client_kib as f64),
    })
}
