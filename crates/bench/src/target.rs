//! The server under test: either one this tool starts (`--spawn`: seeded, on 127.0.0.1:0, in a
//! temporary data dir) or one already running (`--server` + `--accounts`). Either way only a
//! loopback address is ever a target.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use confab_client::{Api, Id};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::stats::ProcSample;

/// One account of a `confab admin seed` output file: `{"username","user_id","device_id","token"}`.
/// (The same shape as `confab_server::admin::SeededAccount`, restated so that the bench needs
/// only the wire format, not the server, to read it.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeededAccount {
    pub username: String,
    pub user_id: Id,
    pub device_id: Id,
    pub token: String,
}

/// The password of the accounts `--spawn` seeds.
const SEED_PASSWORD: &str = "confab-bench-password";
/// How long a spawned server has to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which server to load: shared by every subcommand.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TargetArgs {
    /// Start a fresh server (`confab serve` on 127.0.0.1:0, temporary data dir), seeded with the
    /// users the run needs, and report its CPU and memory.
    #[arg(long, conflicts_with_all = ["server", "accounts"])]
    pub spawn: bool,
    /// Base URL of a running server (loopback addresses only) [default: http://127.0.0.1:8080].
    /// `pairs` and `sweep` take it more than once, for the nodes of one cluster: user i then
    /// connects to the (i mod count)-th URL, so that partners sit on different nodes and every
    /// message crosses the sync queue.
    #[arg(
        long,
        alias = "url",
        env = "CONFAB_BENCH_SERVER",
        value_delimiter = ','
    )]
    pub server: Vec<String>,
    /// That server's accounts: the JSON file `confab admin seed --out FILE` wrote.
    #[arg(long, env = "CONFAB_BENCH_ACCOUNTS")]
    pub accounts: Option<PathBuf>,
    /// With --spawn: the server's per-device send rate limit (`serve --send-rate`), msgs/s.
    /// High by default, so that the server's work and not its limiter is measured.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub server_send_rate: f64,
    /// With --spawn: the server's per-device send burst (`serve --send-burst`).
    #[arg(long, default_value_t = 1_000_000)]
    pub server_send_burst: u32,
    /// With --spawn: one more argument for `confab serve` (repeatable), e.g.
    /// `--serve-arg=--idle-timeout=120`.
    #[arg(long = "serve-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub serve_args: Vec<String>,
    /// With --spawn: keep the server's data dir and log (`server.log`) here instead of in a
    /// temporary dir that is deleted afterwards.
    #[arg(long, value_name = "DIR")]
    pub spawn_dir: Option<PathBuf>,
    /// With --spawn: start `confab bench relay` instead of `confab serve`, a yardstick that
    /// answers the same frames over the same WebSocket stack with no store, presence or limits:
    /// what this machine and the load generator allow any server.
    #[arg(long, requires = "spawn", conflicts_with = "serve_args")]
    pub relay: bool,
    /// With --spawn: the confab binary to run [default: this program].
    #[arg(long, env = "CONFAB_BIN", hide = true)]
    pub confab_bin: Option<PathBuf>,
}

impl TargetArgs {
    /// Refuses more than one `--server` for a subcommand that loads one server.
    pub fn one_server(&self, command: &str) -> anyhow::Result<()> {
        if self.server.len() > 1 {
            bail!(
                "`{command}` loads one server; only `pairs` and `sweep` spread their users over \
                 several (got {} --server URLs)",
                self.server.len()
            );
        }
        Ok(())
    }
}

/// A server ready to be loaded, and accounts on it.
pub struct Target {
    /// Every server's `ws://…/v1/ws` (never empty): the nodes of one cluster when there are
    /// several (see [`Target::ws_url_for`]).
    pub ws_urls: Vec<String>,
    /// The (first) server's socket address (always loopback).
    pub addr: SocketAddr,
    /// At least as many accounts as the run asked for, in the seed file's order.
    pub accounts: Vec<SeededAccount>,
    /// Where the accounts are on disk (child processes read them from there).
    pub accounts_file: Option<PathBuf>,
    /// The server process, when this tool started it.
    pub server: Option<SpawnedServer>,
    /// The server is `confab bench relay`, not confab.
    pub relay: bool,
}

impl Target {
    /// Starts or finds the server and `users` accounts on it. A spawned server holds as many
    /// sockets as its open-file limit allows (its default `max_connections`).
    pub async fn prepare(args: &TargetArgs, users: usize) -> anyhow::Result<Target> {
        if args.spawn {
            return spawn(args, users).await;
        }
        let bases = if args.server.is_empty() {
            vec!["http://127.0.0.1:8080".to_owned()]
        } else {
            args.server.clone()
        };
        let addr = loopback_addr(&bases[0]).await?;
        // Load goes to loopback only, on every node.
        for base in &bases[1..] {
            loopback_addr(base).await?;
        }
        let Some(file) = &args.accounts else {
            bail!(
                "name the server's accounts with --accounts FILE (the output of `confab admin seed \
                 --count {users} --out FILE`), or use --spawn to start a seeded server"
            );
        };
        let mut accounts = read_accounts(file)?;
        if accounts.len() < users {
            bail!(
                "{} holds {} accounts; this run needs {users}",
                file.display(),
                accounts.len()
            );
        }
        accounts.truncate(users);
        Ok(Target {
            ws_urls: bases.iter().map(|b| Api::new(b).ws_url()).collect(),
            addr,
            accounts,
            accounts_file: Some(file.clone()),
            server: None,
            relay: false,
        })
    }

    /// A target for an in-process server (tests): its address and already seeded accounts.
    pub fn in_process(addr: SocketAddr, accounts: Vec<SeededAccount>) -> Target {
        Target {
            ws_urls: vec![format!("ws://{addr}/v1/ws")],
            addr,
            accounts,
            accounts_file: None,
            server: None,
            relay: false,
        }
    }

    /// The (first) server's `ws://…/v1/ws`.
    pub fn ws_url(&self) -> &str {
        &self.ws_urls[0]
    }

    /// The WebSocket URL user `i` (its index among the run's users) connects to: the servers
    /// in turn, so that users `2j` and `2j + 1`, partners in `pairs`, are on different nodes
    /// whenever there are several.
    pub fn ws_url_for(&self, i: usize) -> &str {
        &self.ws_urls[i % self.ws_urls.len()]
    }

    /// The server's WebSocket URL (or URLs) as reports name it.
    pub fn describe(&self) -> String {
        if self.relay {
            format!("{} (confab bench relay: no store)", self.ws_url())
        } else {
            self.ws_urls.join(", ")
        }
    }

    /// The spawned server's pid, if any.
    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(|s| s.pid)
    }

    /// A reading of the spawned server's CPU and memory, if there is one.
    pub fn server_sample(&self) -> Option<ProcSample> {
        ProcSample::read(Some(self.server_pid()?))
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL after 10 s).
    pub async fn shutdown(self) {
        if let Some(server) = self.server {
            server.stop().await;
        }
    }
}

/// Reads a `confab admin seed` output file.
pub fn read_accounts(file: &Path) -> anyhow::Result<Vec<SeededAccount>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a `confab admin seed` accounts file",
            file.display()
        )
    })
}

/// The `host:port` of a base URL such as `http://127.0.0.1:8080/`.
pub fn authority(base: &str) -> anyhow::Result<&str> {
    let rest = match base.split_once("://") {
        Some((scheme, rest)) => {
            if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws")) {
                bail!("{base}: the bench speaks plain http:// or ws:// to a local server");
            }
            rest
        }
        None => base,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("{base}: no host in the server URL");
    }
    Ok(authority)
}

/// Resolves the server URL and refuses anything outside 127.0.0.0/8 and ::1: the bench only
/// ever loads this machine.
pub async fn loopback_addr(base: &str) -> anyhow::Result<SocketAddr> {
    let authority = authority(base)?;
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:80")
    } else {
        authority.to_owned()
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .collect();
    if addrs.is_empty() || !addrs.iter().all(|a| is_loopback(a.ip())) {
        bail!(
            "{authority} is not a loopback address: the bench only loads servers on this machine \
             (127.0.0.0/8 or ::1)"
        );
    }
    Ok(*addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]))
}

pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A `confab serve` this tool started.
pub struct SpawnedServer {
    pub pid: u32,
    child: Child,
    /// Keeps the temporary data dir alive; `None` with `--spawn-dir`.
    _dir: Option<tempfile::TempDir>,
}

impl SpawnedServer {
    /// SIGTERM (the server flushes and exits), SIGKILL if it has not exited within 10 s.
    pub async fn stop(mut self) {
        // std has no SIGTERM and the workspace forbids unsafe code: `kill(1)` sends it.
        let termed = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if termed
            && tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
        {
            return;
        }
        let _ = self.child.kill().await;
    }
}

/// The confab binary to run for `serve` and `admin seed`.
fn confab_bin(args: &TargetArgs) -> anyhow::Result<PathBuf> {
    match &args.confab_bin {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().context("cannot find this program's path"),
    }
}

async fn spawn(args: &TargetArgs, users: usize) -> anyhow::Result<Target> {
    let bin = confab_bin(args)?;
    let (dir, temp) = match &args.spawn_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("confab-bench-")
                .tempdir()
                .context("cannot create a temporary data dir")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let data_dir = dir.join("data");
    let accounts_file = dir.join("accounts.json");

    // Seed before the server starts: SQLite is opened by one process at a time, and one shared
    // Argon2 hash makes even 100,000 accounts take seconds. The relay makes up its own.
    let mut accounts = Vec::new();
    if users > 0 && !args.relay {
        let status = Command::new(&bin)
            .args([
                "admin",
                "seed",
                "--prefix",
                "bench",
                "--password",
                SEED_PASSWORD,
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--count")
            .arg(users.to_string())
            .arg("--out")
            .arg(&accounts_file)
            // Its progress bar is welcome on stderr, its info logs are not.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .with_context(|| format!("cannot run {} admin seed", bin.display()))?;
        if !status.success() {
            bail!("`{} admin seed` failed ({status})", bin.display());
        }
        accounts = read_accounts(&accounts_file)?;
        if accounts.len() < users {
            bail!("seeding made {} accounts, not {users}", accounts.len());
        }
    }

    let log_path = dir.join("server.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut command = Command::new(&bin);
    if args.relay {
        command
            .args(["bench", "relay", "--listen", "127.0.0.1:0"])
            .arg("--count")
            .arg(users.to_string())
            .arg("--out")
            .arg(&accounts_file);
    } else {
        serve_args(&mut command, args, &data_dir);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} serve", bin.display()))?;
    let pid = child.id().context("the server exited at once")?;
    let stdout = child.stdout.take().context("no stdout from the server")?;
    let mut lines = BufReader::new(stdout);
    let mut first = String::new();
    let read = tokio::time::timeout(START_TIMEOUT, lines.read_line(&mut first)).await;
    let addr = match read {
        Ok(Ok(n)) if n > 0 => parse_listening(&first),
        _ => None,
    };
    let Some(addr) = addr else {
        let _ = child.kill().await;
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(20).collect();
        bail!(
            "the spawned server did not print `confab listening on http://ADDR` (got {:?}); its log ends:\n{}",
            first.trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    };
    // Nothing else is expected on stdout, but a full pipe would block the server: drain it.
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = lines.read_to_end(&mut sink).await;
    });
    if !is_loopback(addr.ip()) {
        bail!("the spawned server listens on {addr}, not on loopback");
    }
    if args.relay {
        // The relay writes its accounts before it listens.
        accounts = read_accounts(&accounts_file)?;
    }
    Ok(Target {
        ws_urls: vec![format!("ws://{addr}/v1/ws")],
        addr,
        accounts,
        accounts_file: Some(accounts_file),
        server: Some(SpawnedServer {
            pid,
            child,
            _dir: temp,
        }),
        relay: args.relay,
    })
}

/// `confab serve` with a fresh data dir and limits out of the benchmark's way.
fn serve_args(command: &mut Command, args: &TargetArgs, data_dir: &Path) {
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--send-rate")
        .arg(args.server_send_rate.to_string())
        .arg("--send-burst")
        .arg(args.server_send_burst.to_string())
        // The per-socket frame limit is a flood guard; a benchmark sender is a legitimate flood.
        .arg("--frame-rate")
        .arg(args.server_send_rate.to_string())
        .arg("--frame-burst")
        .arg(args.server_send_burst.to_string())
        .args(&args.serve_args);
}

/// The address in the server's first line, `confab listening on http://ADDR`.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("confab listening on http://")?
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// Fails with a clear message when this process cannot hold `sockets` sockets at once (its
/// open-file limit, already raised to the hard limit, less a reserve).
pub fn ensure_fd_budget(sockets: usize) -> anyhow::Result<()> {
    const RESERVE: u64 = 200;
    let limit = raise_nofile_limit();
    if sockets as u64 + RESERVE > limit {
        bail!(
            "this run holds {sockets} sockets in one process, but a process here may have at \
             most {limit} open files (`ulimit -Hn`, less {RESERVE} kept in reserve): use fewer \
             users, or raise the hard limit as root"
        );
    }
    Ok(())
}

/// Raises this process's open-file soft limit to its hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_take_the_servers_in_turn_so_partners_are_on_different_nodes() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut target = Target::in_process(addr, Vec::new());
        assert_eq!(target.ws_url_for(7), "ws://127.0.0.1:1/v1/ws");
        target.ws_urls.push("ws://127.0.0.1:2/v1/ws".into());
        let nodes: Vec<&str> = (0..4).map(|i| target.ws_url_for(i)).collect();
        assert_eq!(
            nodes,
            [
                "ws://127.0.0.1:1/v1/ws",
                "ws://127.0.0.1:2/v1/ws",
                "ws://127.0.0.1:1/v1/ws",
                "ws://127.0.0.1:2/v1/ws"
            ]
        );
        assert_eq!(
            target.describe(),
            "ws://127.0.0.1:1/v1/ws, ws://127.0.0.1:2/v1/ws"
        );
    }

    #[test]
    fn only_pairs_and_sweep_take_several_servers() {
        let mut args = TargetArgs::default();
        args.one_server("idle").unwrap();
        args.server = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()];
        let err = args.one_server("idle").unwrap_err().to_string();
        assert!(err.contains("`idle` loads one server"), "{err}");
    }

    #[test]
    fn listening_line_parses() {
        assert_eq!(
            parse_listening("confab listening on http://127.0.0.1:4567\n"),
            Some("127.0.0.1:4567".parse().unwrap())
        );
        assert_eq!(parse_listening("something else"), None);
    }

    #[test]
    fn authority_of_urls() {
        assert_eq!(
            authority("http://127.0.0.1:8080/").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(authority("ws://localhost:9/v1/ws").unwrap(), "localhost:9");
        assert_eq!(authority("127.0.0.2:1").unwrap(), "127.0.0.2:1");
        assert!(authority("https://127.0.0.1").is_err());
        assert!(authority("http://").is_err());
    }

    #[tokio::test]
    async fn only_loopback_is_a_target() {
        assert_eq!(
            loopback_addr("http://127.0.0.1:8080").await.unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert!(loopback_addr("http://127.3.4.5:1").await.is_ok());
        assert!(loopback_addr("http://[::1]:8080").await.is_ok());
        assert!(loopback_addr("http://localhost:8080").await.is_ok());
        // Literal addresses only, so no name lookup leaves the machine.
        assert!(loopback_addr("http://10.0.0.1:8080").await.is_err());
        assert!(loopback_addr("http://192.168.1.1").await.is_err());
    }

    #[test]
    fn raising_the_file_limit_reaches_the_hard_limit() {
        let soft = raise_nofile_limit();
        let (now, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(soft, now);
        assert!(now <= hard);
    }
}
