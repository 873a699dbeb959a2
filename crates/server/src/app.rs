//! Wiring: the only place that picks concrete backends from the configuration, and the
//! server's lifecycle (bind, serve, graceful shutdown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, PresenceConfig, QueueConfig, StoreConfig};
use crate::gateway::hub::{CloseReason, Hub};
use crate::lease::NodeLease;
use crate::metrics::Metrics;
use crate::presence::PresenceService;
use crate::presence::memory::MemoryPresence;
use crate::presence::redis::RedisPresence;
use crate::sequencer::Sequencer;
use crate::store::MessageStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{SqliteMetrics, SqliteOptions, SqliteStore};
use crate::sync::SyncQueue;
use crate::sync::memory::MemoryQueue;
use crate::sync::nats::NatsQueue;

/// How long a node-id lease lasts without renewal (renewed every third of it).
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// Milliseconds since the Unix epoch, server clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Everything a request handler may use. Handles are passed explicitly; there is no global.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn MessageStore>,
    pub sync: Arc<dyn SyncQueue>,
    pub presence: Arc<dyn PresenceService>,
    pub sequencer: Sequencer,
    pub hub: Arc<Hub>,
    pub auth: Auth,
    pub metrics: Metrics,
    /// Cancelled when the server starts shutting down; sockets close with 1001.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket tasks so shutdown can wait for them.
    pub sockets: TaskTracker,
    pub open_sockets: AtomicUsize,
    /// When (`now_ms`) a refusal at the connection limit was last logged: at most one line a
    /// second, so a crowd of clients retrying cannot flood the log (the metric counts them all).
    pub refusal_logged_ms: std::sync::atomic::AtomicI64,
    /// False while this node may not make ids (its node-id lease was lost and no new one is
    /// leased yet).
    pub ids_ok: std::sync::atomic::AtomicBool,
    /// Acks received but possibly not yet stored, by device: a device that reconnects to this
    /// node at once resumes after them instead of seeing those events again.
    pub pending_acks: std::sync::Mutex<std::collections::HashMap<confab_protocol::Id, u64>>,
    /// The sequencer node-id lease, given back on shutdown.
    lease: tokio::sync::Mutex<Option<NodeLease>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Backend(String),
    #[error(
        "the open-file limit ({open_files}) leaves no room for connections after the {reserved} \
         kept for files and backends: raise it (`ulimit -n`, `LimitNOFILE=` under systemd)"
    )]
    OpenFiles { open_files: u64, reserved: u64 },
}

impl App {
    /// Whether a new message may be accepted now. A node refuses sends (`unavailable`) while
    /// its sync queue is down, so nothing is stored that the other nodes would not hear
    /// about, and once its node-id lease is lost, so two nodes never make the same id.
    pub fn can_accept_sends(&self) -> Result<(), crate::error::Error> {
        self.can_make_ids()?;
        if !self.sync.available() {
            return Err(crate::error::Error::Unavailable(
                "the message sync queue is unreachable".into(),
            ));
        }
        Ok(())
    }

    /// Whether this node may make ids now (it holds its node-id lease, in a cluster).
    pub fn can_make_ids(&self) -> Result<(), crate::error::Error> {
        if self.ids_ok.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(crate::error::Error::Unavailable(
                "this node lost its sequencer node-id lease; leasing a new one".into(),
            ))
        }
    }

    /// Opens the backends the configuration names.
    pub async fn open(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Metrics::new();
        let store: Arc<dyn MessageStore> = match &config.store {
            StoreConfig::Sqlite => {
                let dir = config.data_dir.clone();
                let options = SqliteOptions {
                    max_commit_batch: config.max_commit_batch,
                    wal_restart_bytes: config.wal_restart_bytes,
                };
                let store_metrics = SqliteMetrics {
                    commit_batch_size: metrics.commit_batch_size.clone(),
                    wal_restarts: metrics.wal_restarts.clone(),
                };
                let store = tokio::task::spawn_blocking(move || {
                    SqliteStore::open(&dir, options, store_metrics)
                })
                .await
                .map_err(|e| StartError::Backend(e.to_string()))?
                .map_err(|e| StartError::Backend(e.to_string()))?;
                Arc::new(store)
            }
            StoreConfig::Postgres(url) => Arc::new(
                PostgresStore::connect(url, config.postgres_pool)
                    .await
                    .map_err(|e| StartError::Backend(format!("postgres store: {e}")))?,
            ),
        };
        let sync: Arc<dyn SyncQueue> = match &config.queue {
            QueueConfig::Memory => Arc::new(MemoryQueue::new()),
            QueueConfig::Nats(url) => Arc::new(
                NatsQueue::connect(url, &config.cluster)
                    .await
                    .map_err(|e| StartError::Backend(format!("nats sync queue: {e}")))?,
            ),
        };
        let presence: Arc<dyn PresenceService> = match &config.presence {
            PresenceConfig::Memory => Arc::new(MemoryPresence::new()),
            PresenceConfig::Redis(url) => Arc::new(
                RedisPresence::connect(url, &config.cluster, config.presence_ttl)
                    .await
                    .map_err(|e| StartError::Backend(format!("redis presence: {e}")))?,
            ),
        };
        // In a cluster, node ids come from a lease so two live nodes never share one.
        let lease = match &config.presence {
            PresenceConfig::Redis(url) => Some(
                NodeLease::acquire(url, &config.cluster, LEASE_TTL)
                    .await
                    .map_err(|e| StartError::Backend(format!("node id lease: {e}")))?,
            ),
            PresenceConfig::Memory => {
                if config.store != StoreConfig::Sqlite {
                    tracing::warn!(
                        node_id = config.node_id,
                        "shared store without Redis: give every node a distinct --node-id"
                    );
                }
                None
            }
        };
        let node_id = lease.as_ref().map_or(config.node_id, NodeLease::node_id);
        let auth = tokio::task::spawn_blocking(Auth::new)
            .await
            .map_err(|e| StartError::Backend(e.to_string()))?
            .map_err(|e| StartError::Backend(e.to_string()))?;
        let slow = metrics.slow_consumers.clone();
        let hub = Arc::new(Hub::new(
            node_id,
            config.outbound_queue,
            Box::new(move || slow.inc()),
        ));
        let handler_hub = hub.clone();
        sync.subscribe(Arc::new(move |event| handler_hub.deliver(event)))
            .await
            .map_err(|e| StartError::Backend(e.to_string()))?;
        Ok(Arc::new(App {
            sequencer: Sequencer::new(node_id),
            config,
            store,
            sync,
            presence,
            hub,
            auth,
            metrics,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            open_sockets: AtomicUsize::new(0),
            refusal_logged_ms: std::sync::atomic::AtomicI64::new(i64::MIN),
            ids_ok: std::sync::atomic::AtomicBool::new(true),
            lease: tokio::sync::Mutex::new(lease),
            pending_acks: Default::default(),
        }))
    }
}

/// A server that is running.
pub struct Server {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// Binds `config.listen`, opens the backends and starts serving in a background task.
    pub async fn start(mut config: Config) -> Result<Server, StartError> {
        fit_connections_to_open_files(&mut config)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let app = App::open(config).await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app.clone(), stop.clone()));
        Ok(Server {
            addr,
            app,
            stop,
            task,
        })
    }

    /// Graceful shutdown: stop accepting, close sockets with 1001, flush the store.
    pub async fn shutdown(self) -> std::io::Result<()> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Raises the open-file limit and lowers `max_connections` to the sockets it leaves room for
/// (see [`crate::files`]), so that the connection past it is refused with a clear 503, and
/// says how many the node can hold.
fn fit_connections_to_open_files(config: &mut Config) -> Result<(), StartError> {
    let open_files = match crate::files::raise_open_file_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit; connections are capped by max_connections alone");
            return Ok(());
        }
    };
    let pool = matches!(config.store, StoreConfig::Postgres(_)).then_some(config.postgres_pool);
    let reserved = crate::files::reserved_files(pool);
    let capacity = crate::files::socket_capacity(open_files, reserved);
    if capacity == 0 {
        return Err(StartError::OpenFiles {
            open_files,
            reserved,
        });
    }
    if config.max_connections > capacity {
        if config.max_connections != usize::MAX {
            tracing::warn!(
                "max_connections {} is more than the open-file limit allows; lowered to {capacity}",
                config.max_connections
            );
        }
        config.max_connections = capacity;
    }
    tracing::info!(
        "up to {} WebSocket connections (open-file limit {open_files}, {reserved} kept for files and backends)",
        config.max_connections
    );
    Ok(())
}

/// Serves until `stop` is cancelled, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = crate::api::router(app.clone());
    let sweeper = tokio::spawn(sweep_presence(app.clone()));
    let leaser = match &app.config.presence {
        PresenceConfig::Redis(url) => Some(tokio::spawn(keep_lease(app.clone(), url.clone()))),
        PresenceConfig::Memory => None,
    };
    let resyncer = (app.config.queue != QueueConfig::Memory)
        .then(|| tokio::spawn(resync_sockets(app.clone())));
    let connections = TaskTracker::new();
    accept(
        listener,
        router,
        app.config.hello_timeout,
        &connections,
        &stop,
    )
    .await;
    app.shutdown.cancel();
    app.hub.close_all(CloseReason::ShuttingDown);
    // Requests in progress finish and idle connections close (see `accept`). A connection
    // stops being tracked once it is upgraded: its socket is waited for below.
    connections.close();
    connections.wait().await;
    app.sockets.close();
    app.sockets.wait().await;
    sweeper.abort();
    for task in [leaser, resyncer].into_iter().flatten() {
        task.abort();
    }
    app.store.close().await;
    if let Some(lease) = app.lease.lock().await.take()
        && let Err(e) = lease.release().await
    {
        tracing::warn!(error = %e, "could not release the node-id lease; it expires by itself");
    }
    tracing::info!("shut down cleanly");
    Ok(())
}

/// How often a closing connection checks whether it still has a request in hand.
const SHUTDOWN_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// One request being handled on a connection, from its head to its response.
struct Handling(Arc<AtomicUsize>);

impl Handling {
    fn start(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Handling(busy.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until `stop` and serves each over HTTP/1.1 with upgrades.
///
/// Not `axum::serve`: it gives hyper no timer, so a connection that never sends a request, or
/// a keep-alive connection left idle, would hold its file descriptor for ever, and enough of
/// them would exhaust the open-file limit for everyone. Here a connection has `head_timeout`
/// to send each request's head (idle keep-alive time included), as a WebSocket has to send
/// `hello`, and is then closed.
async fn accept(
    listener: TcpListener,
    router: axum::Router,
    head_timeout: std::time::Duration,
    connections: &TaskTracker,
    stop: &CancellationToken,
) {
    use axum::serve::{Listener, ListenerExt};
    // Frames are small and latency matters: no Nagle delay on any socket.
    let mut listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    loop {
        // axum's `Listener` retries failed accepts itself (once a second on `EMFILE`).
        let (io, _) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        // One router for all connections (a clone shares it): building one per connection
        // cost a few percent of a login's CPU.
        connections.spawn(serve_connection(
            io,
            router.clone(),
            head_timeout,
            stop.clone(),
        ));
    }
}

/// One HTTP/1.1 connection, with upgrades, until it ends or `stop`.
async fn serve_connection<Io>(
    io: Io,
    router: axum::Router,
    head_timeout: std::time::Duration,
    stop: CancellationToken,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = hyper_util::service::TowerToHyperService::new(router);
    // Requests of this connection being handled, so that shutdown waits for them only.
    let busy = Arc::new(AtomicUsize::new(0));
    let service = {
        let busy = busy.clone();
        hyper::service::service_fn(move |request| {
            let handling = Handling::start(&busy);
            let response = hyper::service::Service::call(&router, request);
            async move {
                let response = response.await;
                drop(handling);
                response
            }
        })
    };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout);
    let conn = http
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = stop.cancelled() => {
            // An idle keep-alive connection closes at once; one with a request in hand
            // answers it first. hyper would wait for a connection that has not finished
            // sending its first request head until `head_timeout`: that one is dropped as
            // soon as nothing is being handled.
            conn.as_mut().graceful_shutdown();
            loop {
                tokio::select! {
                    served = conn.as_mut() => break served,
                    () = tokio::time::sleep(SHUTDOWN_POLL) => {
                        if busy.load(Ordering::Acquire) == 0 {
                            break Ok(());
                        }
                    }
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Every `sweep_interval`, expires the presence of sockets whose node died and tells their
/// friends they went offline (each user is returned to exactly one node).
async fn sweep_presence(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let expired = match app.presence.sweep(now_ms()).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "presence sweep failed");
                continue;
            }
        };
        for (user, last_seen) in expired {
            if let Err(e) = app.store.set_last_seen(user, last_seen).await {
                tracing::warn!(error = %e, "storing last_seen failed");
            }
            let offline = confab_protocol::Presence {
                status: confab_protocol::PresenceStatus::Offline,
                last_seen,
            };
            crate::presence::notify_friends(&*app.store, &*app.sync, &*app.presence, user, offline)
                .await;
        }
    }
}

/// Replaces a lost node-id lease: sends are refused (`unavailable`) from the loss until a new
/// id is leased, then the sequencer switches to it.
async fn keep_lease(app: Arc<App>, url: String) {
    use std::sync::atomic::Ordering;
    loop {
        let lost = app.lease.lock().await.as_ref().map(NodeLease::lost);
        let Some(lost) = lost else { return };
        tokio::select! {
            _ = lost.cancelled() => {}
            _ = app.shutdown.cancelled() => return,
        }
        app.ids_ok.store(false, Ordering::SeqCst);
        tracing::error!("node-id lease lost; refusing sends until a new id is leased");
        // Not released: the key may belong to another node by now.
        drop(app.lease.lock().await.take());
        let mut backoff = std::time::Duration::from_millis(500);
        loop {
            match NodeLease::acquire(&url, &app.config.cluster, LEASE_TTL).await {
                Ok(lease) => {
                    app.sequencer.set_node(lease.node_id());
                    tracing::info!(node_id = lease.node_id(), "leased a new node id");
                    *app.lease.lock().await = Some(lease);
                    app.ids_ok.store(true, Ordering::SeqCst);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "leasing a node id failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = app.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
        }
    }
}

/// In a cluster the sync queue may lose events (a node was cut off from NATS, a publish
/// failed after its commit). Every `resync_interval` each socket reads its stream from the
/// store after the last position it sent, and re-checks that its token is still valid, so a
/// lost event or revocation is made good within that interval.
async fn resync_sockets(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        app.hub.resync_all();
    }
}
