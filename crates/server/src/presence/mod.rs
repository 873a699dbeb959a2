//! The presence service (design login steps 2-4): who is online.
//!
//! A user is online while at least one of its devices has a socket past `welcome`. The
//! service counts sockets per user and reports the transitions (first socket up, last socket
//! down) so the gateway can tell the user's friends.

pub mod memory;

use async_trait::async_trait;
use confab_protocol::{Id, Presence};

/// Why the presence backend failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

/// Tracks online sockets per user.
///
/// Guarantees: `connected` returns true exactly for the call that takes the user from zero to
/// one socket, `disconnected` exactly for the call that takes it back to zero (cluster-wide in
/// a distributed backend); `last_seen` is the time of that last disconnect (0 if never seen).
#[async_trait]
pub trait PresenceService: Send + Sync + 'static {
    /// A socket of `user` reached `welcome`. `socket` is unique per socket in the cluster.
    async fn connected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError>;
    /// That socket closed. Returns true when it was the user's last one.
    async fn disconnected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError>;
    /// Current presence of each user, in the order asked.
    async fn status(&self, users: &[Id]) -> Result<Vec<Presence>, PresenceError>;
    async fn check(&self) -> Result<(), PresenceError>;
}
