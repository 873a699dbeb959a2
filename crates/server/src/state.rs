//! [`App`]: the handles the HTTP API, the operator tasks and the background jobs share. The
//! gateway holds its own ([`crate::gateway::Gateway`]); state that one part owns lives in
//! that part, not here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::chat::Chat;
use crate::config::GroupBounds;
use crate::metrics::Metrics;
use crate::presence::PresenceService;
use crate::push::PushServer;
use crate::sequencer::IdSource;
use crate::sessions::Sessions;
use crate::store::MessageStore;
use crate::sync::SyncQueue;
use crate::throttle::Throttle;

/// The shared handles. There is no global: each is passed where it is used.
pub struct App {
    /// The message store (design messaging step 4): accounts, devices, contacts, messages.
    pub store: Arc<dyn MessageStore>,
    /// Which tokens are live: the store's devices under the expiry rule.
    pub sessions: Arc<Sessions>,
    /// The message sync queue (step 5); here for its readiness check.
    pub sync: Arc<dyn SyncQueue>,
    /// The presence service (login steps 2-4): contact lists show friends' presence.
    pub presence: Arc<dyn PresenceService>,
    /// The sequencer (step 3): ids of accounts and devices (messages take theirs in `chat`).
    pub ids: Arc<IdSource>,
    /// The design's flows over the handles above.
    pub chat: Arc<Chat>,
    /// The push server (messaging steps 6-8): subscriptions are checked against it.
    pub push: Arc<PushServer>,
    /// Password hashing and verification, on a bounded pool of threads.
    pub auth: Auth,
    /// Failed logins and registrations per account and client address; who the client is.
    pub throttle: Throttle,
    /// The node's Prometheus metrics.
    pub metrics: Metrics,
    /// Most members a group may have, its creator included, and most groups a user may be in.
    pub group_bounds: GroupBounds,
    /// How long an HTTP connection has to send each request head, and then its body (the
    /// gateway's `hello_timeout`): a silent or trickling client cannot hold a connection.
    pub http_timeout: Duration,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
}
