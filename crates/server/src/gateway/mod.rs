//! The chat service (design login step 1, messaging steps 1-2 and 7-8): holds each client's
//! WebSocket, hands its frames to the design's flows ([`crate::chat`]) and delivers events to
//! it in stream order.
//!
//! A socket's life: [`admission`] (the connection cap) → [`handshake`] (`hello`, then register
//! in the [`hub::Hub`] so live events start queueing, then read the store after the cursor,
//! with the rest of the login state, in one round trip) → [`socket`] (`welcome`, catch-up,
//! `synced`, then the live loop, whose client frames are handled in [`frames`]).
//! Registering *before* reading the store is what makes the hand-over exact: an event
//! committed after the read is already queued, one committed before is in the read, and
//! [`order`] drops queued events at or below the last position sent. A live event that jumps
//! ahead of the last position sent (the queue reordered or lost one) is held briefly and then
//! preceded by a read of the gap from the store ([`catchup`]), so nothing is skipped or
//! repeated.

mod admission;
mod catchup;
mod frames;
mod group_acks;
mod groups;
mod handshake;
pub mod hub;
mod io;
pub mod limits;
pub mod order;
pub mod queue;
mod socket;

// Public for the fuzz targets (`fuzz/`), which read cursors as `hello` and `ack` do.
pub use handshake::parse_cursor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use confab_protocol::Id;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chat::Chat;
use crate::config::GatewayConfig;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::MessageStore;
use hub::{CloseReason, Hub};

/// WebSocket close codes used by the server.
pub mod close {
    /// Normal closure (idle timeout).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A violation of RFC 6455's framing: unmasked frame, reserved bits, unknown opcode,
    /// a control frame fragmented or over 125 bytes, a continuation of nothing.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: no `hello`, bad token, revoked token.
    pub const POLICY: u16 = 1008;
    /// A message over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server could not continue this socket (a store read failed).
    pub const INTERNAL: u16 = 1011;
    /// The client reads too slowly; reconnect and catch up.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Read buffer of a socket: also the most one read takes from the kernel. Client frames are
/// small and arrive one at a time, and an idle socket holds this buffer for its lifetime; a
/// bigger frame grows it.
pub const READ_BUFFER: usize = 256;
/// Bytes a socket's writer gathers before writing through (flushes write at once anyway).
pub const WRITE_BUFFER: usize = 8 * 1024;
/// Stream entries read per store query during catch-up.
const CATCH_UP_PAGE: usize = 1000;

/// The chat service's handles and the state it owns.
pub struct Gateway {
    config: GatewayConfig,
    /// The design's flows that frames start.
    chat: Arc<Chat>,
    /// Read by sockets: the login state, catch-up pages.
    store: Arc<dyn MessageStore>,
    /// Tokens at `hello` and at each resync, under the expiry rule.
    sessions: Arc<Sessions>,
    /// This node's sockets by user, where the sync queue's events land.
    hub: Arc<Hub>,
    metrics: Metrics,
    /// Cancelled when the server starts shutting down: a socket registering after
    /// [`Gateway::close_all`] closes at once.
    shutdown: CancellationToken,
    /// Every socket's task, so shutdown can wait for them.
    sockets: TaskTracker,
    admission: admission::Admission,
    /// Rate limits by device, shared by each device's sockets on this node.
    limiters: limits::DeviceLimiters,
    /// Where the nodes of a cluster share what they granted each device (none for a single
    /// process, whose limiters see every socket).
    cluster_limits: Option<Arc<dyn limits::cluster::ClusterLimits>>,
    /// Acks received but possibly not yet stored, by device: a device that reconnects to this
    /// node at once resumes after them instead of seeing those events again.
    pending_acks: Mutex<HashMap<Id, u64>>,
    /// Whether a socket polls its sends itself instead of giving each a task: true where the
    /// store's appends run on a thread of their own and hold nothing while their futures wait
    /// (decided by the wiring).
    sends_polled_by_socket: bool,
}

impl Gateway {
    /// The chat service over these handles.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per handle the gateway holds; the wiring is the only caller"
    )]
    pub fn new(
        config: GatewayConfig,
        chat: Arc<Chat>,
        store: Arc<dyn MessageStore>,
        sessions: Arc<Sessions>,
        hub: Arc<Hub>,
        metrics: Metrics,
        shutdown: CancellationToken,
        sends_polled_by_socket: bool,
        cluster_limits: Option<Arc<dyn limits::cluster::ClusterLimits>>,
    ) -> Self {
        Gateway {
            limiters: limits::DeviceLimiters::new(config.clone()),
            cluster_limits,
            config,
            chat,
            store,
            sessions,
            hub,
            metrics,
            shutdown,
            sockets: TaskTracker::new(),
            admission: admission::Admission::default(),
            pending_acks: Mutex::default(),
            sends_polled_by_socket,
        }
    }

    /// Tells every socket to close with 1001 (graceful shutdown).
    pub fn close_all(&self) {
        self.hub.close_all(CloseReason::ShuttingDown);
    }

    /// Asks every socket to re-read its stream from the store and re-check its token.
    pub fn resync_all(&self) {
        self.hub.resync_all();
    }

    /// The devices with a socket open on this node (each once): they are in use.
    pub fn open_devices(&self) -> Vec<Id> {
        self.hub.devices()
    }

    /// Shares what this node granted each device with the rest of the cluster, and charges
    /// its buckets what the others granted (a no-op for a single process).
    pub async fn exchange_limits(&self) {
        if let Some(shared) = &self.cluster_limits
            && let Err(e) = self.limiters.exchange(shared.as_ref()).await
        {
            tracing::warn!(error = %e, "sharing rate limits with the cluster failed; limits hold per node meanwhile");
        }
    }

    /// Waits until every socket's task has ended (after [`Gateway::close_all`]).
    pub async fn wait_for_sockets(&self) {
        self.sockets.close();
        self.sockets.wait().await;
    }

    /// The acked position of `device` not yet known to be stored, if any.
    fn pending_ack(&self, device: Id) -> Option<u64> {
        self.pending_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&device)
            .copied()
    }

    /// Records that `device` acked `pos` (the highest of its acks wins).
    fn ack_received(&self, device: Id, pos: u64) {
        let mut pending = self.pending_acks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(device).or_insert(pos);
        *entry = (*entry).max(pos);
    }

    /// `device`'s cursor at `pos` is stored: forgotten unless a later ack waits.
    fn ack_stored(&self, device: Id, pos: u64) {
        let mut pending = self.pending_acks.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(&device).is_some_and(|p| *p <= pos) {
            pending.remove(&device);
        }
    }
}

/// The gateway's route: `GET /v1/ws`.
pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/ws", get(admission::upgrade))
        .with_state(gateway)
}
