//! The server's typed configuration: every default is here, once. The binary layers flags and
//! environment variables on top and takes its defaults from [`Config::default`].
//!
//! Settings that belong to one backend sit in that backend's group ([`SqliteConfig`],
//! [`PostgresConfig`], [`RedisConfig`]) and are ignored while another backend is chosen; the
//! chat service's own settings are in [`GatewayConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// An IP address range, as `--trusted-proxy` takes it.
pub use ipnet::IpNet;

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

impl std::fmt::Display for StoreConfig {
    /// As `--store` takes it. (A URL's password shows: print it only where the URL would.)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite => f.write_str("sqlite"),
            StoreConfig::Postgres(url) => f.write_str(url),
        }
    }
}

/// Which message sync queue to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueConfig {
    /// In this process: a single node.
    Memory,
    /// A NATS URL (cluster mode).
    Nats(String),
}

impl QueueConfig {
    /// Parses `--queue`: `memory` or a `nats://` URL.
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

impl std::fmt::Display for QueueConfig {
    /// As `--queue` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueConfig::Memory => f.write_str("memory"),
            QueueConfig::Nats(url) => f.write_str(url),
        }
    }
}

/// Which presence backend to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceConfig {
    /// In this process: a single node.
    Memory,
    /// A Redis URL (cluster mode); it also leases the sequencer's node id.
    Redis(String),
}

impl PresenceConfig {
    /// Parses `--presence`: `memory` or a `redis://` URL.
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

impl std::fmt::Display for PresenceConfig {
    /// As `--presence` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PresenceConfig::Memory => f.write_str("memory"),
            PresenceConfig::Redis(url) => f.write_str(url),
        }
    }
}

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// HTTP and WebSocket address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where the embedded store lives (and its lock file).
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
    /// A token expires after its session goes unused this long.
    pub session_ttl: Duration,
    /// Most members a group may have, its creator included.
    pub max_group_members: usize,
    /// Most groups a user may be a member of at once.
    pub max_groups_per_user: usize,
    /// The chat service: sockets, their timeouts and limits.
    pub gateway: GatewayConfig,
    /// The embedded store's settings.
    pub sqlite: SqliteConfig,
    /// The PostgreSQL store's settings.
    pub postgres: PostgresConfig,
    /// Redis presence's settings.
    pub redis: RedisConfig,
    /// Password hashing and login throttling.
    pub auth: AuthConfig,
    /// The push server: providers, credentials and bounds.
    pub push: PushConfig,
}

/// The chat service's settings: per-socket timeouts, limits and queues.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
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
    /// Frames of any kind per second per device, and their burst, before `rate_limited`.
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
    /// Cluster mode: how often each socket re-reads its stream from the store and re-checks
    /// its token, making good any event the sync queue lost.
    pub resync_interval: Duration,
    /// Most plain-HTTP connections (not, or not yet, upgraded to a WebSocket) open at once,
    /// and from one client address (an IPv6 client's /64); past either, a new connection is
    /// answered 503 `unavailable` at once. Idle connections each hold a file descriptor for up
    /// to `hello_timeout`: the caps keep them from taking those of the WebSockets.
    /// [`crate::Server::start`] fits the total into the open-file limit next to
    /// `max_connections`. A per-address cap of 0 turns that cap off (behind a proxy every
    /// connection comes from the proxy's address).
    pub max_http_connections: usize,
    pub max_http_connections_per_address: usize,
    /// Browser origins besides the server's own (`scheme://host[:port]`, as [`parse_origin`]
    /// makes them) allowed to call the API and open sockets, with CORS headers.
    pub allowed_origins: Vec<String>,
}

/// Parses an `--allowed-origin`: `scheme://host[:port]` as a browser sends it in `Origin`
/// (no path, no trailing slash), lowercased; or `null`. A value a browser never sends would
/// never match, so it is refused at start instead.
pub fn parse_origin(s: &str) -> Result<String, String> {
    let origin = s.trim().to_ascii_lowercase();
    if origin == "null" {
        return Ok(origin);
    }
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| format!("origin {s:?} must start with http:// or https://"))?;
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if valid {
        Ok(origin)
    } else {
        Err(format!(
            "origin {s:?} must be scheme://host[:port], with no path or trailing slash"
        ))
    }
}

/// The embedded store's settings (what `SqliteStore::open` takes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteConfig {
    /// Most writes committed in one transaction (one fsync); at least one.
    pub max_commit_batch: usize,
    /// WAL frames (bytes) since the WAL last started over past which the checkpointer holds
    /// the writer for a moment and starts it over; the WAL file on disk stays near this size.
    /// A smaller bound restarts more often (the operations guide has the trade-off).
    pub wal_restart_bytes: u64,
    /// Free bytes the data directory's disk must have for the node to report ready (0: no
    /// floor). A small write still commits on an almost full disk (the WAL reuses its
    /// space), while messages, which make the WAL grow, start to fail: readiness goes first,
    /// so a load balancer moves traffic away before writes fail.
    pub min_free_disk_bytes: u64,
}

/// The PostgreSQL store's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Connections in the pool (keep pool × nodes under the server's `max_connections`).
    pub pool: usize,
}

/// Redis presence's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// A socket not renewed for this long (its node died) expires.
    pub presence_ttl: Duration,
    /// How often expired presence is swept and announced.
    pub sweep_interval: Duration,
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
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            max_group_members: 1024,
            max_groups_per_user: 1000,
            gateway: GatewayConfig::default(),
            sqlite: SqliteConfig::default(),
            postgres: PostgresConfig::default(),
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            push: PushConfig::default(),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
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
            resync_interval: Duration::from_secs(10),
            // 512 leaves 19,232 WebSockets under an open-file limit of 20,000. A client
            // address may hold a quarter of them: `confab bench` opens at most 128 at once from
            // one address.
            max_http_connections: 512,
            max_http_connections_per_address: 128,
            allowed_origins: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// Ping often enough that a live but quiet client is never taken for dead (at most a
    /// third of `idle_timeout`), so that silence is noticed within
    /// `idle_timeout + ping_interval`.
    pub fn fit_ping_to_idle_timeout(&mut self) {
        self.ping_interval = self.ping_interval.min(self.idle_timeout / 3);
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            max_commit_batch: 16 * 1024,
            wal_restart_bytes: 256 * 1024 * 1024,
            min_free_disk_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { pool: 16 }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            // A dead node's users turn offline within ttl + sweep interval: 35 s < 60 s.
            presence_ttl: Duration::from_secs(30),
            sweep_interval: Duration::from_secs(5),
        }
    }
}

impl RedisConfig {
    /// Sweep at least three times per ttl, so a dead node's users turn offline soon after
    /// their sockets expire.
    pub fn fit_sweep_to_ttl(&mut self) {
        self.sweep_interval = self.sweep_interval.min(self.presence_ttl / 3);
    }
}

/// Password hashing and the throttling of logins and registrations.
///
/// The limits are kept by each node on its own: a cluster of N nodes behind a load balancer
/// lets an account or an address at most N times each limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// Argon2id hashes running at once. Each holds a core for tens of milliseconds (and
    /// 19 MiB): fewer than the cores, so that message handling keeps a core under a login flood.
    pub hash_concurrency: usize,
    /// Hashes waiting for one of those; a login or registration past this is refused at once
    /// with 503 `unavailable` and `Retry-After: 1` instead of waiting without bound.
    pub hash_queue: usize,
    /// Failed logins a minute per account, and three times as many per client address, before
    /// 429 `rate_limited`; 0 turns the limit off.
    pub login_failures_per_minute: u32,
    /// Registrations a minute per client address; 0 turns the limit off.
    pub registrations_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` names the client address (addresses or CIDR ranges).
    /// For any other peer, the TCP peer address is the client's.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        AuthConfig {
            // Half the cores, at least one: the runtime's workers keep the rest.
            hash_concurrency: (cores / 2).max(1),
            hash_queue: 64,
            login_failures_per_minute: 10,
            registrations_per_minute: 30,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Parses a trusted proxy: an address (`10.0.0.1`, `::1`) or a range (`10.0.0.0/8`).
pub fn parse_proxy(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_what_browsers_send() {
        assert_eq!(
            parse_origin("https://Chat.Example.com").unwrap(),
            "https://chat.example.com"
        );
        assert_eq!(
            parse_origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(parse_origin("http://[::1]:80").unwrap(), "http://[::1]:80");
        assert_eq!(parse_origin("null").unwrap(), "null");
        for bad in [
            "chat.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/app",
            "ftp://x",
            "https://",
            "*",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}

/// The bounds of groups, as the flows and the API use them (the configuration's
/// `max_group_members` and `max_groups_per_user`).
#[derive(Clone, Copy, Debug)]
pub struct GroupBounds {
    pub max_members: usize,
    pub max_groups: usize,
}

/// The push server's settings (PROTOCOL.md "Push").
#[derive(Clone, Debug, PartialEq)]
pub struct PushConfig {
    /// Accept Web Push endpoints on loopback and private addresses, and plain `http` (tests,
    /// private networks). Off: only `https` on public addresses, checked on every resolution.
    pub allow_private: bool,
    /// The VAPID private key (PKCS#8 PEM file) to sign with. `None`: the store keeps one,
    /// generated by the first node to start, shared by every node of a cluster.
    pub vapid_key: Option<PathBuf>,
    /// The VAPID `sub` claim: how a push service reaches the operator (`mailto:` or `https:`).
    pub vapid_subject: String,
    /// Push gateways by name (`--push-gateway NAME=URL`), spoken to in the Matrix Push
    /// Gateway API v1.
    pub gateways: Vec<(String, String)>,
    /// Direct APNs, when the operator gives its credentials.
    pub apns: Option<ApnsConfig>,
    /// Direct FCM, when the operator gives a service account.
    pub fcm: Option<FcmConfig>,
    /// Requests to push services in flight at once, over all providers.
    pub concurrency: usize,
    /// How long one request to a push service may take.
    pub request_timeout: Duration,
    /// Most notifications waiting to be sent (due or retrying); past it new ones are dropped
    /// and counted, so a dead push service cannot grow the store without bound.
    pub max_pending: u64,
    /// How long a notification is retried before it is dropped.
    pub max_age: Duration,
    /// The first retry's delay; each further one doubles it (with jitter), up to `max_retry_delay`.
    pub retry_base: Duration,
    pub max_retry_delay: Duration,
    /// How often the outbox and the due notifications are looked at when nothing wakes the
    /// push server (another node's messages, retries coming due).
    pub poll_interval: Duration,
    /// How long a claim lasts: a node that dies mid-way leaves its rows to another after it.
    pub lease: Duration,
}

/// Direct APNs (HTTP/2, token-based authentication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApnsConfig {
    /// The `.p8` signing key (PKCS#8 PEM) from the Apple developer account.
    pub key: PathBuf,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com` by default; overridable for the sandbox and tests.
    pub endpoint: String,
}

/// Direct FCM (HTTP v1, OAuth 2 with a service account).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FcmConfig {
    /// The service account's JSON key file (`project_id`, `client_email`, `private_key`,
    /// `token_uri`).
    pub credentials: PathBuf,
    /// `https://fcm.googleapis.com` by default; overridable for tests.
    pub endpoint: String,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            allow_private: false,
            vapid_key: None,
            vapid_subject: "mailto:admin@localhost".into(),
            gateways: Vec::new(),
            apns: None,
            fcm: None,
            concurrency: 64,
            request_timeout: Duration::from_secs(10),
            max_pending: 1_000_000,
            max_age: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
        }
    }
}

/// APNs' production endpoint.
pub const APNS_ENDPOINT: &str = "https://api.push.apple.com";
/// FCM's endpoint.
pub const FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

/// Parses `--push-gateway NAME=URL`.
pub fn parse_gateway(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("push gateway {s:?} must be NAME=URL"))?;
    let name = name.trim();
    let url = url.trim().trim_end_matches('/');
    if name.is_empty() || !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "push gateway {s:?} must be NAME=URL with an http:// or https:// URL"
        ));
    }
    Ok((name.to_owned(), url.to_owned()))
}
