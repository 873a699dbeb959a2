//! The wiring: the only place that names concrete backends. It opens what the configuration
//! asks for, and turns what it knows about them into capabilities the rest asks instead
//! (whether the sync queue is node-local, whether a store's appends may be polled by the
//! socket itself, which background jobs are needed).

use std::collections::HashMap;
use std::sync::Arc;

use confab_protocol::PushKind;

use crate::auth::Auth;
use crate::chat::{Chat, LocalSockets};
use crate::config::{Config, GroupBounds, PresenceConfig, QueueConfig, StoreConfig};
use crate::error::StartError;
use crate::gateway::Gateway;
use crate::gateway::hub::Hub;
use crate::gateway::limits::cluster::{ClusterLimits, EXCHANGE_EVERY};
use crate::gateway::limits::redis::RedisLimits;
use crate::jobs::{Jobs, LEASE_TTL};
use crate::metrics::Metrics;
use crate::presence::PresenceService;
use crate::presence::memory::MemoryPresence;
use crate::presence::redis::RedisPresence;
use crate::push::apns::Apns;
use crate::push::fcm::Fcm;
use crate::push::gateway::Gateways;
use crate::push::vapid::VapidKeyPair;
use crate::push::webpush::WebPush;
use crate::push::{Provider, PushServer};
use crate::sequencer::IdSource;
use crate::sequencer::lease::NodeLease;
use crate::sessions::Sessions;
use crate::state::App;
use crate::store::MessageStore;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::{SqliteMetrics, SqliteStore};
use crate::sync::SyncQueue;
use crate::sync::memory::MemoryQueue;
use crate::sync::nats::NatsQueue;
use crate::throttle::Throttle;

/// A node's parts, wired: the shared handles, the gateway, and the jobs it needs.
pub struct Node {
    pub app: Arc<App>,
    pub gateway: Arc<Gateway>,
    pub jobs: Jobs,
}

/// Opens the backends the configuration names and wires the node's parts to them.
pub async fn open(config: Config) -> Result<Node, StartError> {
    let metrics = Metrics::new();
    let store = open_store(&config, &metrics).await?;
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
            RedisPresence::connect(url, &config.cluster, config.redis.presence_ttl)
                .await
                .map_err(|e| StartError::Backend(format!("redis presence: {e}")))?,
        ),
    };
    // In a cluster, node ids come from a lease so two live nodes never share one.
    let ids = Arc::new(match &config.presence {
        PresenceConfig::Redis(url) => IdSource::leased(
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
            IdSource::fixed(config.node_id)
        }
    });
    // In a cluster the nodes share what they grant each device, where presence is shared.
    let cluster_limits: Option<Arc<dyn ClusterLimits>> = match &config.presence {
        PresenceConfig::Redis(url) => Some(Arc::new(
            RedisLimits::connect(url, &config.cluster)
                .await
                .map_err(|e| StartError::Backend(format!("redis limits: {e}")))?,
        )),
        PresenceConfig::Memory => None,
    };
    let auth_config = config.auth.clone();
    let auth = tokio::task::spawn_blocking(move || Auth::new(&auth_config))
        .await
        .map_err(|e| StartError::Backend(e.to_string()))?
        .map_err(|e| StartError::Backend(e.to_string()))?;
    let slow = metrics.slow_consumers.clone();
    let hub = Arc::new(Hub::new(
        ids.node(),
        config.gateway.outbound_queue,
        Box::new(move || slow.inc()),
    ));
    let handler_hub = hub.clone();
    sync.subscribe(Arc::new(move |event| handler_hub.deliver(event)))
        .await
        .map_err(|e| StartError::Backend(e.to_string()))?;

    // What the backends imply, decided here once.
    let sync_is_node_local = config.queue == QueueConfig::Memory;
    // SQLite's appends run on its writer thread and hold nothing while their futures wait:
    // a socket may poll its sends itself. A PostgreSQL append holds a pooled connection
    // until its future finishes, so each runs in a task of its own.
    let sends_polled_by_socket = config.store == StoreConfig::Sqlite;
    let sessions = Arc::new(Sessions::new(store.clone(), config.session_ttl));
    let jobs = Jobs {
        sweep: matches!(config.presence, PresenceConfig::Redis(_))
            .then_some(config.redis.sweep_interval),
        lease: match &config.presence {
            PresenceConfig::Redis(url) => Some((url.clone(), config.cluster.clone())),
            PresenceConfig::Memory => None,
        },
        resync: (!sync_is_node_local).then_some(config.gateway.resync_interval),
        // Every node's sockets keep their sessions alive, whatever the backends.
        touch_sessions: Some(sessions.touch_every()),
        exchange_limits: cluster_limits.is_some().then_some(EXCHANGE_EVERY),
        // Every node sends notifications: the store's leases share the work out.
        push: true,
    };

    let push_wake = Arc::new(tokio::sync::Notify::new());
    let push = open_push(&config, &store, &presence, &metrics, push_wake.clone()).await?;
    let chat = Arc::new(Chat::new(
        store.clone(),
        sync.clone(),
        presence.clone(),
        ids.clone(),
        hub.clone() as Arc<dyn LocalSockets>,
        metrics.clone(),
        push_wake,
        sync_is_node_local,
    ));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let gateway = Arc::new(Gateway::new(
        config.gateway.clone(),
        chat.clone(),
        store.clone(),
        sessions.clone(),
        hub,
        metrics.clone(),
        shutdown.clone(),
        sends_polled_by_socket,
        cluster_limits,
    ));
    let app = Arc::new(App {
        store,
        sessions,
        sync,
        presence,
        ids,
        chat,
        push,
        auth,
        throttle: Throttle::new(&config.auth),
        metrics,
        group_bounds: GroupBounds {
            max_members: config.max_group_members,
            max_groups: config.max_groups_per_user,
        },
        http_timeout: config.gateway.hello_timeout,
        shutdown,
    });
    Ok(Node { app, gateway, jobs })
}

/// The push server with a provider for each kind the configuration makes possible: Web Push
/// always (its VAPID key given, or the store's), the gateways named, APNs and FCM with
/// credentials.
async fn open_push(
    config: &Config,
    store: &Arc<dyn MessageStore>,
    presence: &Arc<dyn PresenceService>,
    metrics: &Metrics,
    wake: Arc<tokio::sync::Notify>,
) -> Result<Arc<PushServer>, StartError> {
    let push = &config.push;
    let pem = match &push.vapid_key {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| StartError::Backend(format!("VAPID key {}: {e}", path.display())))?,
        // The first node to start stores the key it made; every later start, on any node,
        // reads that one, so browsers' subscriptions stay valid across nodes and restarts.
        None => store
            .vapid_key(&VapidKeyPair::generate_pem())
            .await
            .map_err(|e| StartError::Backend(format!("VAPID key: {e}")))?,
    };
    let vapid = Arc::new(
        VapidKeyPair::from_pem(&pem).map_err(|e| StartError::Backend(format!("VAPID key: {e}")))?,
    );
    let mut providers: HashMap<PushKind, Arc<dyn Provider>> = HashMap::new();
    providers.insert(
        PushKind::Webpush,
        Arc::new(WebPush::new(push, vapid.clone()).map_err(StartError::Backend)?),
    );
    if !push.gateways.is_empty() {
        providers.insert(PushKind::Gateway, Arc::new(Gateways::new(push)?));
    }
    if let Some(apns) = &push.apns {
        providers.insert(
            PushKind::Apns,
            Arc::new(Apns::new(apns, push.request_timeout)?),
        );
    }
    if let Some(fcm) = &push.fcm {
        providers.insert(
            PushKind::Fcm,
            Arc::new(Fcm::new(fcm, push.request_timeout)?),
        );
    }
    Ok(Arc::new(PushServer::new(
        store.clone(),
        presence.clone(),
        providers,
        vapid.public_key().to_owned(),
        config.push.clone(),
        metrics.push.clone(),
        wake,
    )))
}

async fn open_store(
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<dyn MessageStore>, StartError> {
    Ok(match &config.store {
        StoreConfig::Sqlite => {
            let (dir, options) = (config.data_dir.clone(), config.sqlite.clone());
            let metrics = SqliteMetrics {
                commit_batch_size: metrics.commit_batch_size.clone(),
                wal_restarts: metrics.wal_restarts.clone(),
            };
            let store =
                tokio::task::spawn_blocking(move || SqliteStore::open(&dir, options, metrics))
                    .await
                    .map_err(|e| StartError::Backend(e.to_string()))?
                    .map_err(|e| StartError::Backend(e.to_string()))?;
            Arc::new(store)
        }
        StoreConfig::Postgres(url) => Arc::new(
            PostgresStore::connect(url, config.postgres.pool)
                .await
                .map_err(|e| StartError::Backend(format!("postgres store: {e}")))?,
        ),
    })
}
