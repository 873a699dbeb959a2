//! The `confab` binary: `confab serve` runs the whole chat service.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod admin;
mod chat;
mod push_args;

// mimalloc: per-thread free lists make the many small, short-lived allocations of message
// handling (frames, tasks, channel slots) markedly cheaper than glibc's malloc, which
// showed up as ~10 % of the server's profile under load.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use confab_server::config::{PresenceConfig, QueueConfig, StoreConfig, parse_origin};
use confab_server::sequencer::MAX_NODE;
use confab_server::{Config, Server};

#[derive(Parser)]
#[command(
    name = "confab",
    version,
    about = "A chat server: one binary, durable messages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the chat server (every service in this process by default).
    Serve(Box<ServeArgs>),
    /// Operator tasks on a store.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// A terminal chat client: prints incoming messages, sends each stdin line to `--to`.
    Chat(chat::ChatArgs),
    /// Load generator: pairs, group, push, sweep, idle, catchup, login-flood (loopback only).
    Bench(confab_bench::BenchArgs),
}

/// The server's defaults, which the flags show and fall back to.
fn defaults() -> Config {
    Config::default()
}

/// Where the data lives: shared by `serve` and the admin commands.
#[derive(Args, Clone)]
pub struct BackendArgs {
    /// Where the embedded store lives.
    #[arg(long, env = "CONFAB_DATA_DIR", default_value_os_t = defaults().data_dir)]
    data_dir: PathBuf,
    /// Message store: `sqlite` (in the data dir) or a postgres:// URL.
    #[arg(long, env = "CONFAB_STORE", default_value_t = defaults().store, value_parser = StoreConfig::parse)]
    store: StoreConfig,
    /// Message sync queue between nodes: `memory` or a nats:// URL.
    #[arg(long, env = "CONFAB_QUEUE", default_value_t = defaults().queue, value_parser = QueueConfig::parse)]
    queue: QueueConfig,
    /// Presence backend: `memory` or a redis:// URL.
    #[arg(long, env = "CONFAB_PRESENCE", default_value_t = defaults().presence, value_parser = PresenceConfig::parse)]
    presence: PresenceConfig,
    /// Sequencer node id, 0-1023, unique per running node.
    #[arg(long, env = "CONFAB_NODE_ID", default_value_t = defaults().node_id,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_NODE)))]
    node_id: u16,
    /// Cluster name: prefixes Redis keys, NATS subjects and streams, so clusters can share engines.
    #[arg(long, env = "CONFAB_CLUSTER", default_value_t = defaults().cluster)]
    cluster: String,
}

impl BackendArgs {
    /// The server configuration with these backends and every other setting at its default.
    pub fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            queue: self.queue.clone(),
            presence: self.presence.clone(),
            node_id: self.node_id,
            cluster: self.cluster.clone(),
            ..defaults()
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// HTTP + WebSocket address (port 0 picks a free port).
    #[arg(long, env = "CONFAB_LISTEN", default_value_t = defaults().listen)]
    listen: SocketAddr,
    #[command(flatten)]
    backend: BackendArgs,
    /// Seconds a new socket has to send `hello`, and an HTTP connection each request's head
    /// (idle keep-alive connections are closed after as long).
    #[arg(long, env = "CONFAB_HELLO_TIMEOUT", default_value_t = defaults().gateway.hello_timeout.as_secs_f64())]
    hello_timeout: f64,
    /// Seconds of silence after which a socket counts as dead (WebSocket pings keep live ones busy).
    #[arg(long, env = "CONFAB_IDLE_TIMEOUT", default_value_t = defaults().gateway.idle_timeout.as_secs_f64())]
    idle_timeout: f64,
    /// Sustained `send` frames per second allowed per device (all its sockets together).
    #[arg(long, env = "CONFAB_SEND_RATE", default_value_t = defaults().gateway.send_rate_per_sec)]
    send_rate: f64,
    /// Burst of `send` frames allowed above the rate.
    #[arg(long, env = "CONFAB_SEND_BURST", default_value_t = defaults().gateway.send_burst)]
    send_burst: u32,
    /// Frames of any kind per second allowed per device (floods get `rate_limited`).
    #[arg(long, env = "CONFAB_FRAME_RATE", default_value_t = defaults().gateway.frame_rate_per_sec)]
    frame_rate: f64,
    /// Burst of frames allowed above that rate.
    #[arg(long, env = "CONFAB_FRAME_BURST", default_value_t = defaults().gateway.frame_burst)]
    frame_burst: u32,
    /// Connections in the PostgreSQL pool (keep pool × nodes under PostgreSQL's max_connections).
    #[arg(long, env = "CONFAB_POSTGRES_POOL", default_value_t = defaults().postgres.pool)]
    postgres_pool: usize,
    /// Cluster mode: seconds between each socket's re-read of its stream from the store,
    /// which makes good any event the sync queue lost.
    #[arg(long, env = "CONFAB_RESYNC_INTERVAL", default_value_t = defaults().gateway.resync_interval.as_secs_f64())]
    resync_interval: f64,
    /// How long a session may go unused before its token expires: `30d`, `12h`, `90m`, `45s`
    /// (or groups such as `1h30m`). An open socket counts as use. [default: 30d]
    #[arg(long, env = "CONFAB_SESSION_TTL", value_parser = confab_server::sessions::parse_ttl)]
    session_ttl: Option<Duration>,
    /// Seconds after which a dead node's sockets expire from Redis presence.
    #[arg(long, env = "CONFAB_PRESENCE_TTL", default_value_t = defaults().redis.presence_ttl.as_secs_f64())]
    presence_ttl: f64,
    /// Most open WebSockets; more are refused with 503. Default: as many as the open-file
    /// limit leaves room for (it is raised to the hard limit at start; 256 descriptors are
    /// kept for files and backends). A larger value is lowered to that.
    #[arg(long, env = "CONFAB_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most plain-HTTP connections (not upgraded to a WebSocket) at once; more are answered
    /// 503. Fitted into the open-file limit next to the WebSockets, whose descriptors stay
    /// reserved.
    #[arg(long, env = "CONFAB_MAX_HTTP_CONNECTIONS", default_value_t = u32::try_from(defaults().gateway.max_http_connections).unwrap_or(u32::MAX),
          value_parser = clap::value_parser!(u32).range(1..))]
    max_http_connections: u32,
    /// Most plain-HTTP connections from one client address (an IPv6 /64); 0 turns this cap
    /// off (do so behind a proxy, whose address every connection then has).
    #[arg(long, env = "CONFAB_MAX_HTTP_CONNECTIONS_PER_ADDRESS", default_value_t = defaults().gateway.max_http_connections_per_address)]
    max_http_connections_per_address: usize,
    /// A browser origin allowed to call the API and open sockets besides the server's own,
    /// as `scheme://host[:port]` (repeatable; the variable takes a comma-separated list).
    /// Its pages get CORS headers; other origins get 403.
    #[arg(long = "allowed-origin", env = "CONFAB_ALLOWED_ORIGINS", value_delimiter = ',',
          value_parser = parse_origin, value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
    /// Embedded store: most writes committed together (one fsync). Larger batches write each
    /// hot page once for more messages; a commit then takes longer.
    #[arg(long, env = "CONFAB_COMMIT_BATCH",
          default_value_t = u32::try_from(defaults().sqlite.max_commit_batch).unwrap_or(u32::MAX),
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    commit_batch: u32,
    /// Embedded store: MiB of WAL frames after which the WAL starts over (the WAL file stays
    /// near this size). Each restart holds writes for a few ms; a smaller bound restarts more
    /// often.
    #[arg(long, env = "CONFAB_WAL_RESTART_MIB",
          default_value_t = u32::try_from(defaults().sqlite.wal_restart_bytes >> 20).unwrap_or(u32::MAX),
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    wal_restart_mib: u32,
    /// Embedded store: MiB the data directory's disk must have free for `/readyz` to answer
    /// 200 (0: no floor), so traffic moves away before writes fail on a full disk.
    #[arg(long, env = "CONFAB_MIN_FREE_DISK_MIB",
          default_value_t = defaults().sqlite.min_free_disk_bytes >> 20)]
    min_free_disk_mib: u64,
    /// Registrations a minute per client address (0: no limit).
    #[arg(long, env = "CONFAB_REGISTRATIONS_PER_MINUTE", default_value_t = defaults().auth.registrations_per_minute)]
    registrations_per_minute: u32,
    /// Failed logins a minute per account, and 3× that per client address (0: no limit).
    #[arg(long, env = "CONFAB_LOGIN_FAILURES_PER_MINUTE", default_value_t = defaults().auth.login_failures_per_minute)]
    login_failures_per_minute: u32,
    /// A proxy (address or CIDR range; repeatable) whose `X-Forwarded-For` names the client
    /// address. Default: none, every client address is the TCP peer's.
    #[arg(long = "trusted-proxy", env = "CONFAB_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = confab_server::config::parse_proxy)]
    trusted_proxies: Vec<confab_server::config::IpNet>,
    /// Password hashes (logins, registrations) run at once [default: half the cores, at least 1].
    #[arg(long, env = "CONFAB_HASH_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=1024))]
    hash_concurrency: Option<u32>,
    /// Logins and registrations waiting for a hash; more are refused with 503 and `Retry-After: 1`.
    #[arg(long, env = "CONFAB_HASH_QUEUE", default_value_t = defaults().auth.hash_queue)]
    hash_queue: usize,
    /// Most members a group may have, its creator included.
    #[arg(long, env = "CONFAB_MAX_GROUP_MEMBERS", default_value_t = u32::try_from(defaults().max_group_members).unwrap_or(u32::MAX),
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    max_group_members: u32,
    /// Most groups a user may be a member of at once.
    #[arg(long, env = "CONFAB_MAX_GROUPS_PER_USER",
          default_value_t = u32::try_from(defaults().max_groups_per_user).unwrap_or(u32::MAX),
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_groups_per_user: u32,
    #[command(flatten)]
    push: push_args::PushArgs,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(format!("{name} must be a positive number of seconds"))
            }
        };
        let mut config = self.backend.config();
        config.listen = self.listen;
        if let Some(ttl) = self.session_ttl {
            config.session_ttl = ttl;
        }
        config.max_group_members = usize::try_from(self.max_group_members).unwrap_or(usize::MAX);
        config.max_groups_per_user =
            usize::try_from(self.max_groups_per_user).unwrap_or(usize::MAX);
        let gateway = &mut config.gateway;
        gateway.hello_timeout = secs("--hello-timeout", self.hello_timeout)?;
        gateway.idle_timeout = secs("--idle-timeout", self.idle_timeout)?;
        gateway.fit_ping_to_idle_timeout();
        gateway.send_rate_per_sec = self.send_rate;
        gateway.send_burst = self.send_burst;
        gateway.frame_rate_per_sec = self.frame_rate;
        gateway.frame_burst = self.frame_burst;
        if let Some(max) = self.max_connections {
            gateway.max_connections = max;
        }
        gateway.resync_interval = secs("--resync-interval", self.resync_interval)?;
        gateway.max_http_connections = self.max_http_connections as usize;
        gateway.max_http_connections_per_address = self.max_http_connections_per_address;
        gateway.allowed_origins = self.allowed_origins;
        config.sqlite.max_commit_batch = self.commit_batch as usize;
        config.sqlite.wal_restart_bytes = u64::from(self.wal_restart_mib) * 1024 * 1024;
        config.sqlite.min_free_disk_bytes = self.min_free_disk_mib.saturating_mul(1024 * 1024);
        config.postgres.pool = self.postgres_pool.max(1);
        config.redis.presence_ttl = secs("--presence-ttl", self.presence_ttl)?;
        config.redis.fit_sweep_to_ttl();
        let auth = &mut config.auth;
        auth.registrations_per_minute = self.registrations_per_minute;
        auth.login_failures_per_minute = self.login_failures_per_minute;
        auth.trusted_proxies = self.trusted_proxies;
        if let Some(n) = self.hash_concurrency {
            auth.hash_concurrency = usize::try_from(n).unwrap_or(usize::MAX);
        }
        auth.hash_queue = self.hash_queue;
        self.push.apply(&mut config.push)?;
        Ok(config)
    }
}

/// Logs to stderr at the level `RUST_LOG` asks (default `info`), with secrets kept out.
///
/// Below `info`, libraries print what passes through them: tungstenite every frame (tokens in
/// `hello`, message bodies), tokio-postgres every statement's parameters (password hashes,
/// bodies), hyper request heads (bearer tokens). So only confab's own code may log below
/// `info`, and it never logs a token, a password or a body: `RUST_LOG=trace` is safe to turn
/// on in production. (A library's debug output, if ever needed, is for a test machine: there
/// is no switch for it on purpose.)
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, filter};

    let level = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let no_library_detail = filter::filter_fn(|meta| {
        *meta.level() <= tracing::Level::INFO || is_confabs_own(meta.target())
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a terminal (and not there either under NO_COLOR): a log redirected
        // to a file or a journal stays plain text.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_filter(no_library_detail);
    tracing_subscriber::registry().with(level).with(fmt).init();
}

/// Whether a log target is confab's own code (its crates are `confab` and `confab_*`).
fn is_confabs_own(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    krate == "confab" || krate.starts_with("confab_")
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("confab: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Admin(cmd) => runtime.block_on(admin::run(cmd)),
        Command::Chat(args) => runtime.block_on(chat::run(args)),
        Command::Bench(args) => runtime.block_on(confab_bench::run(args)),
    }
}

/// Turns transparent huge pages off for this process, as Redis does. mimalloc asks for them
/// (`madvise`) on its arenas, and the kernel then zeroes a whole 2 MiB page at the first touch
/// of any byte of it: while 19,000 sockets connected that zeroing was 15 % of the server's
/// CPU, and it held 10 MiB more of memory at rest. Nothing here gains from the fewer TLB
/// misses huge pages buy a big, densely used heap (docs/benchmarks/history.md has the runs).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only costs speed; some kernels lack the flag.
        eprintln!("confab: cannot turn transparent huge pages off ({e}); running with them");
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("confab listening on http://{}", server.addr);
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    tracing::info!("shutting down");
    match server.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confab: error while shutting down: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
