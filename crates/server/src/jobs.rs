//! The node's background jobs: the presence sweep, the node-id lease keeper, the resync
//! ticker, the session toucher, the exchange of rate limits and the push server. Which of them run is decided by the wiring, from what the
//! backends need.

use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;
use crate::sequencer::lease::NodeLease;
use crate::state::App;
use crate::time::now_ms;

/// How long a node-id lease lasts without renewal (renewed every third of it).
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// Which jobs a node runs.
#[derive(Clone, Debug, Default)]
pub struct Jobs {
    /// Expire the presence of dead nodes' sockets this often (a presence backend shared by
    /// several nodes; a single process's sockets die with it).
    pub sweep: Option<Duration>,
    /// Replace a lost node-id lease from this Redis URL, for this cluster.
    pub lease: Option<(String, String)>,
    /// Have every socket re-read its stream this often (a sync queue that can lose events).
    pub resync: Option<Duration>,
    /// Record that the devices of this node's open sockets are in use, this often, so that a
    /// socket held open for days keeps its session alive (`crate::sessions`).
    pub touch_sessions: Option<Duration>,
    /// Share what each device was granted with the other nodes this often (a cluster).
    pub exchange_limits: Option<Duration>,
    /// Run the push server: expand the outbox, send due notifications.
    pub push: bool,
}

/// The running jobs; they stop when this is dropped.
pub struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Jobs {
    /// Starts the configured jobs.
    pub fn start(&self, app: &Arc<App>, gateway: &Arc<Gateway>) -> Running {
        let mut tasks = Vec::new();
        if let Some(every) = self.sweep {
            tasks.push(tokio::spawn(sweep_presence(app.clone(), every)));
        }
        if let Some((url, cluster)) = &self.lease {
            tasks.push(tokio::spawn(keep_lease(
                app.clone(),
                url.clone(),
                cluster.clone(),
            )));
        }
        if let Some(every) = self.resync {
            tasks.push(tokio::spawn(resync_sockets(gateway.clone(), every)));
        }
        if let Some(every) = self.touch_sessions {
            tasks.push(tokio::spawn(touch_sessions(
                app.clone(),
                gateway.clone(),
                every,
            )));
        }
        if let Some(every) = self.exchange_limits {
            tasks.push(tokio::spawn(exchange_limits(gateway.clone(), every)));
        }
        if self.push {
            tasks.push(tokio::spawn(app.push.clone().run(app.shutdown.clone())));
        }
        Running(tasks)
    }
}

/// Every `every`, expires the presence of sockets whose node died and tells their friends
/// they went offline (each user is returned to exactly one node).
async fn sweep_presence(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
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
            app.chat.announce_offline(user, last_seen).await;
        }
    }
}

/// Replaces a lost node-id lease: ids (and so sends) are refused (`unavailable`) from the
/// loss until a new id is leased, then the sequencer switches to it.
async fn keep_lease(app: Arc<App>, url: String, cluster: String) {
    loop {
        let Some(lost) = app.ids.lease_lost().await else {
            return;
        };
        tokio::select! {
            _ = lost.cancelled() => {}
            _ = app.shutdown.cancelled() => return,
        }
        app.ids.lose_lease().await;
        tracing::error!("node-id lease lost; refusing sends until a new id is leased");
        let mut backoff = Duration::from_millis(500);
        loop {
            match NodeLease::acquire(&url, &cluster, LEASE_TTL).await {
                Ok(lease) => {
                    tracing::info!(node_id = lease.node_id(), "leased a new node id");
                    app.ids.replace_lease(lease).await;
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "leasing a node id failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = app.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// In a cluster the sync queue may lose events (a node was cut off from NATS, a publish
/// failed after its commit). Every `every` each socket reads its stream from the store after
/// the last position it sent, and re-checks that its token is still valid, so a lost event
/// or revocation is made good within that interval.
async fn resync_sockets(gateway: Arc<Gateway>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        gateway.resync_all();
    }
}

/// Every `every`, records that the devices with a socket open here are in use: one batched
/// write for all of them, off the sockets' own loops.
async fn touch_sessions(app: Arc<App>, gateway: Arc<Gateway>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let devices = gateway.open_devices();
        if devices.is_empty() {
            continue;
        }
        if let Err(e) = app.sessions.touch(devices).await {
            tracing::warn!(error = %e, "could not record the open sockets' sessions as used");
        }
    }
}

/// Every `every`, shares what this node granted each device with the cluster and charges its
/// buckets what the other nodes granted (`gateway::limits::cluster`).
async fn exchange_limits(gateway: Arc<Gateway>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gateway.exchange_limits().await;
    }
}
