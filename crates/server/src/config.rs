//! The server's typed configuration. Defaults here; the binary layers flags and env vars on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which message store to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded SQLite in the data directory.
    Sqlite,
    /// A PostgreSQL URL (cluster mode).
    Postgres(String),
}

impl StoreConfig {
    /// Parses `--store`: `sqlite` or a `postgres://` URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("sqlite") || s.is_empty() {
            Ok(StoreConfig::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreConfig::Postgres(s.to_owned()))
        } else {
            Err(format!(
                "unknown store {s:?}: expected `sqlite` or a postgres:// URL"
            ))
        }
    }
}

/// Which message sync queue to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueConfig {
    Memory,
    Nats(String),
}

impl QueueConfig {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("memory") || s.is_empty() {
            Ok(QueueConfig::Memory)
        } else if s.starts_with("nats://") {
            Ok(QueueConfig::Nats(s.to_owned()))
        } else {
            Err(format!(
                "unknown queue {s:?}: expected `memory` or a nats:// URL"
            ))
        }
    }
}

/// Which presence backend to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceConfig {
    Memory,
    Redis(String),
}

impl PresenceConfig {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("memory") || s.is_empty() {
            Ok(PresenceConfig::Memory)
        } else if s.starts_with("redis://") || s.starts_with("rediss://") {
            Ok(PresenceConfig::Redis(s.to_owned()))
        } else {
            Err(format!(
                "unknown presence {s:?}: expected `memory` or a redis:// URL"
            ))
        }
    }
}

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub queue: QueueConfig,
    pub presence: PresenceConfig,
    /// Sequencer node id (0-1023). Unique per live node. In a cluster with Redis presence it
    /// is leased from Redis instead and this value is ignored.
    pub node_id: u16,
    /// Name of the cluster: prefixes Redis keys, NATS subjects and JetStream streams, so
    /// several clusters (or test runs) can share the same engines.
    pub cluster: String,
    /// A socket that has not sent `hello` by then is closed with 1008. An HTTP connection has
    /// as long to send each request's head (counted from its connect, or from the end of the
    /// last response on a keep-alive connection), and then as long for its body, and is
    /// closed otherwise.
    pub hello_timeout: Duration,
    /// How often the server sends a WebSocket ping to each socket.
    pub ping_interval: Duration,
    /// A socket silent for this long (no frame, no pong) is considered dead and closed; it is
    /// checked at each ping, so detection takes at most `idle_timeout + ping_interval`.
    pub idle_timeout: Duration,
    /// Sustained `send` rate per device (messages per second)...
    pub send_rate_per_sec: f64,
    /// ...and the burst it may send above that rate.
    pub send_burst: u32,
    /// Frames of any kind per second per socket, and their burst, before `rate_limited`.
    pub frame_rate_per_sec: f64,
    pub frame_burst: u32,
    /// Events queued for one socket before it counts as too slow and is disconnected.
    pub outbound_queue: usize,
    /// `send`s of one socket awaiting their durable ack at once; past this the socket is not read.
    pub max_inflight_sends: usize,
    /// Most open WebSockets; more are refused with 503 `unavailable`. `usize::MAX` (the
    /// default) sets no cap of its own: [`crate::Server::start`] lowers any value to what the
    /// process's open-file limit leaves room for (see [`crate::files`]).
    pub max_connections: usize,
    /// Most writes the store commits in one transaction (one fsync).
    pub max_commit_batch: usize,
    /// Embedded store: WAL frames (bytes) since the WAL last started over past which the
    /// checkpointer holds the writer for a moment and starts it over; the WAL file on disk
    /// stays near this size. Each restart holds the writer (1-13 ms with 10,000 users at
    /// 10,000 msgs/s, 8-64 ms at 25,000); at 25,000 msgs/s (~10 KB of WAL per message) 64 MiB
    /// restarted four times a second, and 256 MiB took the p90 from 23-48 to 10-22 ms
    /// (docs/benchmarks/history.md).
    pub wal_restart_bytes: u64,
    /// Connections in the PostgreSQL pool.
    pub postgres_pool: usize,
    /// Redis presence: a socket not renewed for this long (its node died) expires.
    pub presence_ttl: Duration,
    /// How often expired presence is swept and announced.
    pub sweep_interval: Duration,
    /// Cluster mode: how often each socket re-reads its stream from the store and re-checks
    /// its token, making good any event the sync queue lost.
    pub resync_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./confab-data"),
            store: StoreConfig::Sqlite,
            queue: QueueConfig::Memory,
            presence: PresenceConfig::Memory,
            node_id: 0,
            cluster: "confab".into(),
            hello_timeout: Duration::from_secs(10),
            // Silence is checked at each ping, so a vanished device is detected within
            // idle_timeout + ping_interval = 55 s: under the 60 s PROTOCOL.md promises.
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(40),
            send_rate_per_sec: 20.0,
            send_burst: 100,
            frame_rate_per_sec: 200.0,
            frame_burst: 400,
            outbound_queue: 4096,
            max_inflight_sends: 256,
            max_connections: usize::MAX,
            max_commit_batch: 16 * 1024,
            wal_restart_bytes: 256 * 1024 * 1024,
            postgres_pool: 16,
            // A dead node's users turn offline within ttl + sweep interval: 35 s < 60 s.
            presence_ttl: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
            resync_interval: Duration::from_secs(10),
        }
    }
}
