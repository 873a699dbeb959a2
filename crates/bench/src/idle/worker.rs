//! The child processes of an `idle` run: starting one and following its reports (parent
//! side), and `confab bench idle-worker` itself (child side), which speak JSON lines.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::holder::Holder;
use super::share::{Live, open_share};
use super::{IdleArgs, IdleWorkerArgs};
use crate::connect::SourcePlan;
use crate::target::{Target, read_accounts};

/// A line a worker process prints on stdout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct WorkerLine {
    connected: u64,
    failed: u64,
    /// Every socket of the share was tried.
    #[serde(default)]
    ready: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    errors: BTreeMap<String, u64>,
    /// Set on the last line, after stdin closed: sockets that closed while held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropped: Option<u64>,
}

/// A child process holding a share, and what it reported.
pub(super) struct ChildShare {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    /// connected, failed as the child last reported.
    pub(super) live: Arc<Live>,
    /// The failures by reason, once every socket of the share was tried.
    pub(super) ready: Option<oneshot::Receiver<BTreeMap<String, u64>>>,
    /// How many of its sockets dropped, once it let go of them.
    pub(super) bye: oneshot::Receiver<u64>,
}

/// Starts a child process for sockets `offset..offset + count`.
pub(super) fn spawn_worker(
    exe: &std::path::Path,
    target: &Target,
    accounts: &std::path::Path,
    offset: usize,
    count: usize,
    plan: Option<SourcePlan>,
    args: &IdleArgs,
) -> anyhow::Result<ChildShare> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "idle-worker", "--ws-url", target.ws_url()])
        .arg("--server-addr")
        .arg(target.addr.to_string())
        .arg("--accounts")
        .arg(accounts)
        .arg("--offset")
        .arg(offset.to_string())
        .arg("--count")
        .arg(count.to_string())
        .arg("--concurrency")
        .arg(args.concurrency.to_string())
        .arg("--timeout")
        .arg(args.timeout.to_string());
    if let Some(p) = plan {
        cmd.arg("--source-base")
            .arg(p.base.to_string())
            .arg("--per-address")
            .arg(p.per_address.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} bench idle-worker", exe.display()))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("no stdout from the worker")?;
    let live = Arc::new(Live::default());
    let (ready_tx, ready_rx) = oneshot::channel();
    let (bye_tx, bye_rx) = oneshot::channel();
    let seen = live.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut ready_tx = Some(ready_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(l) = serde_json::from_str::<WorkerLine>(&line) else {
                continue;
            };
            seen.connected.store(l.connected, Ordering::Relaxed);
            seen.failed.store(l.failed, Ordering::Relaxed);
            if l.ready
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(l.errors.clone());
            }
            if let Some(d) = l.dropped {
                let _ = bye_tx.send(d);
                return;
            }
        }
        // The child ended without saying goodbye: its sockets are gone with it.
        let lost = seen.connected.load(Ordering::Relaxed);
        if let Some(tx) = ready_tx.take() {
            let _ = tx.send(BTreeMap::from([(
                "worker process ended early".to_owned(),
                1,
            )]));
        }
        let _ = bye_tx.send(lost);
    });
    Ok(ChildShare {
        child,
        stdin,
        live,
        ready: Some(ready_rx),
        bye: bye_rx,
    })
}

/// `confab bench idle-worker`: opens its share, reports on stdout, holds the sockets until
/// stdin closes (or the time bound passes), then says how many dropped.
pub(crate) async fn worker_main(args: IdleWorkerArgs) -> anyhow::Result<bool> {
    let accounts = read_accounts(&args.accounts)?;
    let share = accounts
        .get(args.offset..args.offset + args.count)
        .ok_or_else(|| {
            anyhow!(
                "the accounts file has no accounts {}..{}",
                args.offset,
                args.offset + args.count
            )
        })?;
    let timeout = Duration::try_from_secs_f64(args.timeout).unwrap_or(Duration::from_secs(600));
    let plan = args.source_base.map(|base| SourcePlan {
        base,
        per_address: args.per_address.max(1),
    });
    let live = Arc::new(Live::default());
    let holder = Holder::start();
    let say = |l: &WorkerLine| {
        if let Ok(s) = serde_json::to_string(l) {
            println!("{s}");
        }
    };
    let ticker = {
        let live = live.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let l = WorkerLine {
                    connected: live.connected.load(Ordering::Relaxed),
                    failed: live.failed.load(Ordering::Relaxed),
                    ..Default::default()
                };
                if let Ok(s) = serde_json::to_string(&l) {
                    println!("{s}");
                }
            }
        })
    };
    let errors = open_share(
        args.server_addr,
        &args.ws_url,
        share,
        args.offset,
        plan,
        args.concurrency,
        Instant::now() + timeout,
        &live,
        &holder,
    )
    .await;
    ticker.abort();
    let mut line = WorkerLine {
        connected: live.connected.load(Ordering::Relaxed),
        failed: live.failed.load(Ordering::Relaxed),
        ready: true,
        errors,
        dropped: None,
    };
    say(&line);
    // Hold until the parent closes stdin; never longer than the time bound, so an orphaned
    // worker goes away by itself.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        timeout + Duration::from_secs(3600),
        tokio::io::stdin().read_to_end(&mut sink),
    )
    .await;
    line.ready = false;
    line.errors.clear();
    line.dropped = Some(holder.stop().await);
    say(&line);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_lines_round_trip() {
        let progress = WorkerLine {
            connected: 5,
            failed: 1,
            ..Default::default()
        };
        let s = serde_json::to_string(&progress).unwrap();
        assert_eq!(s, r#"{"connected":5,"failed":1,"ready":false}"#);
        assert_eq!(serde_json::from_str::<WorkerLine>(&s).unwrap(), progress);
        let bye = WorkerLine {
            dropped: Some(2),
            ..progress
        };
        let back: WorkerLine = serde_json::from_str(&serde_json::to_string(&bye).unwrap()).unwrap();
        assert_eq!(back.dropped, Some(2));
    }
}
