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

mod holder;
mod run;
mod share;
mod summary;
mod worker;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use run::run_idle;
pub use summary::IdleReport;
pub(crate) use worker::worker_main;

use crate::UsageError;
use crate::connect::{HANDSHAKES_PER_ADDRESS, SourcePlan, ephemeral_ports};
use crate::report::{self, OutputArgs};
use crate::target::{Target, TargetArgs, raise_nofile_limit};

/// Most sockets one run may open.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// Open files a process keeps for itself (stdio, the runtime, pipes to children).
const FD_RESERVE: u64 = 200;
/// Open files a server keeps back from its sockets (`confab_server::files::RESERVED_FILES`),
/// and for plain-HTTP connections by default (`serve --max-http-connections`).
const SERVER_FD_RESERVE: u64 = 256;
const SERVER_HTTP_CONNECTIONS: u64 = 512;

/// `confab bench idle`.
#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Sockets to open (one account each).
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: usize,
    /// Sockets being opened at once (per process). On the reference 2-core machine 64-128
    /// gave the highest rate; 256 gave a third less. Lowered so that no source address has
    /// more than 128 handshakes in flight (a server's default cap on plain-HTTP connections
    /// from one address).
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

/// How many sockets one process may hold.
fn per_process_limit() -> usize {
    let soft = raise_nofile_limit();
    soft.saturating_sub(FD_RESERVE).max(16) as usize
}

/// `confab bench idle`.
pub async fn main(mut args: IdleArgs) -> anyhow::Result<bool> {
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
    args.concurrency = concurrency_per_process(args.concurrency, plan, per_process, processes);
    let server_holds = raise_nofile_limit()
        .saturating_sub(SERVER_FD_RESERVE)
        .saturating_sub(SERVER_HTTP_CONNECTIONS);
    if args.target.spawn && n as u64 > server_holds {
        report::note(format!(
            "the spawned server inherits an open-file limit of {}: it holds at most {server_holds} \
             sockets and refuses the rest (raise the hard limit, `ulimit -Hn`, as root to go \
             further)",
            raise_nofile_limit(),
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

/// Sockets one process opens at once: `wanted`, lowered so that the processes that may use
/// one source address at the same time (their shares are consecutive, an address's block may
/// span several) have at most [`HANDSHAKES_PER_ADDRESS`] handshakes in flight from it.
fn concurrency_per_process(
    wanted: usize,
    plan: SourcePlan,
    per_process: usize,
    processes: usize,
) -> usize {
    let sharing = (plan.per_address.div_ceil(per_process.max(1)) + 1).min(processes.max(1));
    wanted.clamp(1, (HANDSHAKES_PER_ADDRESS / sharing).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_reserve_is_the_servers() {
        assert_eq!(SERVER_FD_RESERVE, confab_server::files::RESERVED_FILES);
        let defaults = confab_server::config::GatewayConfig::default();
        assert_eq!(
            SERVER_HTTP_CONNECTIONS,
            defaults.max_http_connections as u64
        );
        assert_eq!(
            HANDSHAKES_PER_ADDRESS,
            defaults.max_http_connections_per_address
        );
    }

    #[test]
    fn one_address_never_has_more_handshakes_than_the_server_lets_in() {
        let plan = SourcePlan {
            base: Ipv4Addr::LOCALHOST,
            per_address: 25_000,
        };
        assert_eq!(concurrency_per_process(128, plan, 1_000_000, 1), 128);
        assert_eq!(concurrency_per_process(512, plan, 1_000_000, 1), 128);
        assert_eq!(concurrency_per_process(0, plan, 1_000_000, 1), 1);
        // Two processes may meet at an address's boundary; 19,800 per process, three.
        assert_eq!(concurrency_per_process(128, plan, 30_000, 4), 64);
        assert_eq!(concurrency_per_process(128, plan, 19_800, 6), 42);
        assert_eq!(concurrency_per_process(128, plan, 19_800, 2), 64);
    }
}
