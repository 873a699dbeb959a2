//! `confab bench idle`: opens many authenticated sockets that then sit idle, and reports how
//! fast they connected and, with `--spawn`, how much memory each costs the server.
//!
//! Two limits of one machine shape it. A source address has only so many ephemeral ports
//! (about 28,000 by default), so the sockets are bound to 127.0.0.1, 127.0.0.2, … in turn
//! (see [`SourcePlan`]); the SDK cannot bind, so these sockets are opened here with
//! tokio-tungstenite, still speaking confab-protocol's frames. And a process may hold only as
//! many sockets as its open-file limit: beyond that, the sockets are spread over child
//! processes of this same program (`confab bench idle-worker`), each reporting on stdout and
//! holding its sockets until its stdin closes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::UsageError;
use crate::connect::{RawSocket, SourcePlan, connect_from, count, ephemeral_ports, failure_reason};
use crate::pairs::process_line;
use crate::report::{self, OutputArgs, Table, fmt_counts, fmt_n};
use crate::stats::{ProcSample, ProcessStats};
use crate::target::{SeededAccount, Target, TargetArgs, raise_nofile_limit, read_accounts};

/// Most sockets one run may open.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Open files a process keeps for itself (stdio, the runtime, pipes to children).
const FD_RESERVE: u64 = 200;
/// Open files a server keeps back from its sockets (`confab_server::files::RESERVED_FILES`).
const SERVER_FD_RESERVE: u64 = 256;

/// `confab bench idle`.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Sockets to open (one account each).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Sockets being opened at once (per process). On the reference 2-core machine 64-128
    /// gave the highest rate; 256 gave a third less.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds to hold the sockets after the last one connected; memory is read at the end.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// The first source address; the next ones follow (127.0.0.1, 127.0.0.2, …).
    #[arg(long, default_value = "127.0.0.1")]
    pub source_base: Ipv4Addr,
    /// Sockets per source address [default: 90 % of the kernel's ephemeral port range].
    #[arg(long)]
    pub per_address: Option<usize>,
    /// Sockets per process; more are spread over child processes [default: the open-file
    /// limit less a reserve].
    #[arg(long)]
    pub per_process: Option<usize>,
    /// Seconds the connecting may take in all.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `confab bench idle-worker`: one child process's share of an `idle` run.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleWorkerArgs {
    #[arg(long)]
    pub ws_url: String,
    #[arg(long)]
    pub server_addr: SocketAddr,
    #[arg(long)]
    pub accounts: PathBuf,
    /// The share: accounts (and socket numbers) `offset..offset + count`.
    #[arg(long)]
    pub offset: usize,
    #[arg(long)]
    pub count: usize,
    /// Source addresses, as [`SourcePlan`]; none when the server is not on IPv4.
    #[arg(long)]
    pub source_base: Option<Ipv4Addr>,
    #[arg(long, default_value_t = 25_000)]
    pub per_address: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to connect, and the most the sockets are held after that.
    #[arg(long, default_value_t = 600.0)]
    pub timeout: f64,
}

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

/// Everything an `idle` run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IdleReport {
    pub server: String,
    pub spawned: bool,
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    /// Failures by reason.
    pub errors: BTreeMap<String, u64>,
    /// Seconds from the first connect to the last socket past `synced`.
    pub connect_s: f64,
    /// Sockets past `synced` per second.
    pub connect_per_sec: f64,
    /// Processes holding sockets (this one, or its children).
    pub processes: usize,
    /// Source addresses used, and sockets per address at most.
    pub source_addresses: usize,
    /// The first and last of them.
    pub source_range: String,
    pub per_address: usize,
    /// Seconds the sockets were held after connecting.
    pub hold_s: f64,
    /// Sockets that closed while held.
    pub dropped: u64,
    /// The spawned server's resident memory before the first connect and after the hold, MiB.
    pub server_rss_before_mib: Option<f64>,
    pub server_rss_after_mib: Option<f64>,
    /// (after − before) / connected, KiB.
    pub server_kib_per_connection: Option<f64>,
    /// The spawned server over connect and hold.
    pub server_process: Option<ProcessStats>,
    /// Resident memory of the processes holding the sockets, MiB, and per socket, KiB.
    pub client_rss_mib: f64,
    pub client_kib_per_connection: f64,
}

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = Table::new(format!(
            "confab bench idle: {} authenticated idle sockets",
            fmt_n(self.requested)
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "connected",
            format!(
                "{} of {} in {:.2} s ({:.0} sockets/s)",
                fmt_n(self.connected),
                fmt_n(self.requested),
                self.connect_s,
                self.connect_per_sec
            ),
        );
        t.row(
            "failed",
            format!("{} ({})", fmt_n(self.failed), fmt_counts(&self.errors)),
        );
        t.row(
            "spread",
            format!(
                "{} process(es), {} source address(es) ({}) of up to {} sockets",
                self.processes,
                self.source_addresses,
                self.source_range,
                fmt_n(self.per_address as u64)
            ),
        );
        t.row(
            "held",
            format!("{} s, {} dropped", self.hold_s, fmt_n(self.dropped)),
        );
        if let (Some(b), Some(a)) = (self.server_rss_before_mib, self.server_rss_after_mib) {
            t.row(
                "server RSS",
                format!(
                    "{b:.1} MiB → {a:.1} MiB: {:.1} KiB per socket",
                    self.server_kib_per_connection.unwrap_or(0.0)
                ),
            );
        }
        if let Some(s) = &self.server_process {
            t.row("server", process_line(s));
        }
        t.row(
            "bench RSS",
            format!(
                "{:.1} MiB ({:.1} KiB per socket)",
                self.client_rss_mib, self.client_kib_per_connection
            ),
        );
        write!(f, "{t}")
    }
}

/// Counters shared by the connecting tasks of one process.
#[derive(Default)]
struct Live {
    connected: AtomicU64,
    failed: AtomicU64,
}

/// An event of a held socket.
enum Held {
    Frame,
    End,
}

type HeldStream = Pin<Box<dyn Stream<Item = Held> + Send>>;

/// Holds sockets: reads them all (which also answers the server's pings) in one task and
/// counts the ones that close. Stop it to close them all.
struct Holder {
    add: mpsc::UnboundedSender<RawSocket>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<u64>,
}

impl Holder {
    fn start() -> Holder {
        let (add, mut added) = mpsc::unbounded_channel::<RawSocket>();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut all: SelectAll<HeldStream> = SelectAll::new();
            let mut dropped = 0u64;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    Some(ws) = added.recv() => {
                        let s = ws
                            .map(|m| match m {
                                Ok(WsMessage::Close(_)) | Err(_) => Held::End,
                                Ok(_) => Held::Frame,
                            })
                            .chain(stream::once(async { Held::End }))
                            // A socket ends once, however it ends (an error, then the end).
                            .scan(false, |ended, ev| {
                                let out = (!*ended).then(|| {
                                    *ended = matches!(ev, Held::End);
                                    ev
                                });
                                std::future::ready(out)
                            });
                        all.push(Box::pin(s));
                    }
                    Some(ev) = all.next(), if !all.is_empty() => {
                        if let Held::End = ev {
                            dropped += 1;
                        }
                    }
                }
            }
            dropped
        });
        Holder { add, stop, task }
    }

    /// Closes every socket; returns how many had closed on their own.
    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

/// Opens the sockets of `accounts` (socket numbers from `first_index`) into `holder`.
/// Returns the failures by reason.
#[allow(
    clippy::too_many_arguments,
    reason = "one share's whole plan; a struct would only repeat the caller's locals"
)]
async fn open_share(
    server: SocketAddr,
    ws_url: &str,
    accounts: &[SeededAccount],
    first_index: usize,
    plan: Option<SourcePlan>,
    concurrency: usize,
    deadline: Instant,
    live: &Live,
    holder: &Holder,
) -> BTreeMap<String, u64> {
    let mut errors = BTreeMap::new();
    let ws_url: Arc<str> = Arc::from(ws_url);
    // Each attempt is a task of its own, so that the handshakes of one process run on all of
    // the runtime's threads (in one task they were bound to one core, which capped the rate).
    let attempts = stream::iter(accounts.iter().enumerate())
        .map(|(i, a)| {
            let source = plan.map(|p| p.source(first_index + i));
            let (ws_url, token) = (ws_url.clone(), a.token.clone());
            let task =
                tokio::spawn(async move { connect_from(server, &ws_url, source, &token).await });
            async move {
                task.await
                    .unwrap_or_else(|e| Err(anyhow!("connect task failed: {e}")))
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut attempts = std::pin::pin!(attempts);
    loop {
        let next = tokio::time::timeout_at(deadline, attempts.next()).await;
        match next {
            Ok(Some(Ok(ws))) => {
                live.connected.fetch_add(1, Ordering::Relaxed);
                let _ = holder.add.send(ws);
            }
            Ok(Some(Err(e))) => {
                live.failed.fetch_add(1, Ordering::Relaxed);
                count(&mut errors, &failure_reason(&e));
            }
            Ok(None) => break,
            Err(_) => {
                let done =
                    live.connected.load(Ordering::Relaxed) + live.failed.load(Ordering::Relaxed);
                let left = (accounts.len() as u64).saturating_sub(done);
                live.failed.fetch_add(left, Ordering::Relaxed);
                *errors
                    .entry("timeout: not connected in time".into())
                    .or_default() += left;
                break;
            }
        }
    }
    errors
}

/// How many sockets one process may hold.
fn per_process_limit() -> usize {
    let soft = raise_nofile_limit();
    soft.saturating_sub(FD_RESERVE).max(16) as usize
}

/// `confab bench idle`.
pub async fn main(args: IdleArgs) -> anyhow::Result<bool> {
    let usage = |e: String| anyhow::Error::new(UsageError(e));
    let n = args.connections;
    if n == 0 || n > MAX_CONNECTIONS {
        return Err(usage(format!(
            "--connections must be 1 to {MAX_CONNECTIONS}"
        )));
    }
    let hold = Duration::try_from_secs_f64(args.hold)
        .ok()
        .filter(|h| h.as_secs() <= 3600)
        .ok_or_else(|| usage("--hold must be 0 to 3600 seconds".into()))?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero() && t.as_secs() <= 3600)
        .ok_or_else(|| usage("--timeout must be more than 0 and at most 3600 seconds".into()))?;
    let plan = match args.per_address {
        Some(0) => return Err(usage("--per-address must be at least 1".into())),
        Some(p) => SourcePlan {
            base: args.source_base,
            per_address: p,
        },
        None => SourcePlan::for_port_range(args.source_base, ephemeral_ports()),
    };
    if !plan.fits_loopback(n) {
        return Err(usage(format!(
            "{n} sockets at {} per address from {} would leave 127.0.0.0/8",
            plan.per_address, plan.base
        )));
    }
    let per_process = match args.per_process {
        Some(0) => return Err(usage("--per-process must be at least 1".into())),
        Some(p) => p.min(per_process_limit()),
        None => per_process_limit(),
    };
    let processes = n.div_ceil(per_process);
    if args.target.spawn && n as u64 + SERVER_FD_RESERVE > raise_nofile_limit() {
        report::note(format!(
            "the spawned server inherits an open-file limit of {}: it holds at most {} sockets \
             and refuses the rest (raise the hard limit, `ulimit -Hn`, as root to go further)",
            raise_nofile_limit(),
            raise_nofile_limit().saturating_sub(SERVER_FD_RESERVE)
        ));
    }

    args.target.one_server("idle")?;
    let target = Target::prepare(&args.target, n).await?;
    let result = run_idle(&target, &args, plan, processes, hold, timeout).await;
    target.shutdown().await;
    let report = result?;
    args.output.print(&report);
    Ok(report.connected == report.requested && report.dropped == 0)
}

/// A share of the sockets: held here or by a child process.
enum Share {
    Local(Holder),
    Child(Box<ChildShare>),
}

/// A child process holding a share, and what it reported.
struct ChildShare {
    child: Child,
    stdin: Option<ChildStdin>,
    /// connected, failed as the child last reported.
    live: Arc<Live>,
    /// The failures by reason, once every socket of the share was tried.
    ready: Option<oneshot::Receiver<BTreeMap<String, u64>>>,
    /// How many of its sockets dropped, once it let go of them.
    bye: oneshot::Receiver<u64>,
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
            shares.push(spawn_worker(
                &exe,
                target,
                &accounts_file,
                a,
                b - a,
                plan,
                args,
            )?);
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

/// Starts a child process for sockets `offset..offset + count`.
fn spawn_worker(
    exe: &std::path::Path,
    target: &Target,
    accounts: &std::path::Path,
    offset: usize,
    count: usize,
    plan: Option<SourcePlan>,
    args: &IdleArgs,
) -> anyhow::Result<Share> {
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
    Ok(Share::Child(Box::new(ChildShare {
        child,
        stdin,
        live,
        ready: Some(ready_rx),
        bye: bye_rx,
    })))
}

/// `confab bench idle-worker`: opens its share, reports on stdout, holds the sockets until
/// stdin closes (or the time bound passes), then says how many dropped.
pub async fn worker_main(args: IdleWorkerArgs) -> anyhow::Result<bool> {
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
    fn the_server_reserve_is_the_servers() {
        assert_eq!(SERVER_FD_RESERVE, confab_server::files::RESERVED_FILES);
    }

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

    #[test]
    fn idle_report_round_trips() {
        let r = IdleReport {
            server: "ws://127.0.0.1:1/v1/ws".into(),
            requested: 10,
            connected: 10,
            processes: 1,
            source_addresses: 1,
            per_address: 25_000,
            server_rss_before_mib: Some(10.0),
            server_rss_after_mib: Some(11.0),
            server_kib_per_connection: Some(102.4),
            ..Default::default()
        };
        let back: IdleReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.to_string().contains("102.4 KiB per socket"));
    }
}
