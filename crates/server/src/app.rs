//! Wiring: the only place that picks concrete backends from the configuration, and the
//! server's lifecycle (bind, serve, graceful shutdown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, PresenceConfig, QueueConfig, StoreConfig};
use crate::gateway::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::PresenceService;
use crate::presence::memory::MemoryPresence;
use crate::sequencer::Sequencer;
use crate::store::MessageStore;
use crate::store::sqlite::SqliteStore;
use crate::sync::SyncQueue;
use crate::sync::memory::MemoryQueue;

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
}

impl App {
    /// Opens the backends the configuration names.
    pub async fn open(config: Config) -> Result<Arc<App>, StartError> {
        let metrics = Metrics::new();
        let store: Arc<dyn MessageStore> = match &config.store {
            StoreConfig::Sqlite => {
                let dir = config.data_dir.clone();
                let (batch, hist) = (config.max_commit_batch, metrics.commit_batch_size.clone());
                let store =
                    tokio::task::spawn_blocking(move || SqliteStore::open(&dir, batch, hist))
                        .await
                        .map_err(|e| StartError::Backend(e.to_string()))?
                        .map_err(|e| StartError::Backend(e.to_string()))?;
                Arc::new(store)
            }
            StoreConfig::Postgres(_) => {
                return Err(StartError::Backend(
                    "the postgres store is not available in this build".into(),
                ));
            }
        };
        let sync: Arc<dyn SyncQueue> = match &config.queue {
            QueueConfig::Memory => Arc::new(MemoryQueue::new()),
            QueueConfig::Nats(_) => {
                return Err(StartError::Backend(
                    "the nats sync queue is not available in this build".into(),
                ));
            }
        };
        let presence: Arc<dyn PresenceService> = match &config.presence {
            PresenceConfig::Memory => Arc::new(MemoryPresence::new()),
            PresenceConfig::Redis(_) => {
                return Err(StartError::Backend(
                    "the redis presence backend is not available in this build".into(),
                ));
            }
        };
        let auth = tokio::task::spawn_blocking(Auth::new)
            .await
            .map_err(|e| StartError::Backend(e.to_string()))?
            .map_err(|e| StartError::Backend(e.to_string()))?;
        let slow = metrics.slow_consumers.clone();
        let hub = Arc::new(Hub::new(
            config.node_id,
            config.outbound_queue,
            Box::new(move || slow.inc()),
        ));
        let handler_hub = hub.clone();
        sync.subscribe(Arc::new(move |event| handler_hub.deliver(event)))
            .await
            .map_err(|e| StartError::Backend(e.to_string()))?;
        Ok(Arc::new(App {
            sequencer: Sequencer::new(config.node_id),
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
    pub async fn start(config: Config) -> Result<Server, StartError> {
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

/// Serves until `stop` is cancelled, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let router = crate::api::router(app.clone());
    let signal = {
        let (stop, app) = (stop.clone(), app.clone());
        async move {
            stop.cancelled().await;
            app.shutdown.cancel();
        }
    };
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(signal)
        .await;
    // axum stops tracking a connection once it is upgraded; wait for the sockets ourselves.
    app.shutdown.cancel();
    app.sockets.close();
    app.sockets.wait().await;
    app.store.close().await;
    tracing::info!("shut down cleanly");
    served
}
