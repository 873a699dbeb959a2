//! The presence service (design login steps 2-4): who is online.
//!
//! A user is online while at least one of its devices has a socket past `welcome`. The
//! service counts sockets per user and reports the transitions (first socket up, last socket
//! down) so the gateway can tell the user's friends.

pub mod memory;
pub mod redis;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use confab_protocol::{Id, Presence, PresenceStatus, ServerFrame};

use crate::store::MessageStore;
use crate::sync::{SyncEvent, SyncQueue};

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
    /// A socket of `user`'s `device` reached `welcome`. `socket` is unique per socket in the
    /// cluster.
    async fn connected(
        &self,
        user: Id,
        device: Id,
        socket: u64,
        now: i64,
    ) -> Result<bool, PresenceError>;
    /// That socket closed. Returns true when it was the user's last one.
    async fn disconnected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError>;
    /// Current presence of each user, in the order asked.
    async fn status(&self, users: &[Id]) -> Result<Vec<Presence>, PresenceError>;
    /// The devices of `users` with a socket past `welcome` (unexpired, on any node): the
    /// push server's presence check (design messaging step 6).
    async fn online_devices(&self, users: &[Id]) -> Result<HashSet<Id>, PresenceError>;
    async fn check(&self) -> Result<(), PresenceError>;
    /// Removes sockets whose node stopped renewing them (it died) and returns the users that
    /// thereby went offline, each exactly once cluster-wide, with their `last_seen`. The server
    /// calls it every few seconds and tells those users' friends. A single-process backend
    /// has nothing to expire: its sockets die with it.
    async fn sweep(&self, _now: i64) -> Result<Vec<(Id, i64)>, PresenceError> {
        Ok(Vec::new())
    }
}

/// Login step 4: tells `user`'s friends (mutual contacts, no block either way) its presence.
/// Non-friends are never told anything.
///
/// Two sockets of one user opening and closing at once can publish their transitions out of
/// order; so after publishing, the current status is read again and, if it differs, published
/// too. Friends therefore always end on the true state.
pub async fn notify_friends(
    store: &dyn MessageStore,
    sync: &dyn SyncQueue,
    service: &dyn PresenceService,
    user: Id,
    presence: Presence,
) {
    let friends = match store.friends(user).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, %user, "cannot read friends; presence not sent");
            return;
        }
    };
    notify(sync, service, &friends, user, presence).await;
}

/// [`notify_friends`] for a caller that has just read the friends itself.
pub async fn notify(
    sync: &dyn SyncQueue,
    service: &dyn PresenceService,
    friends: &[Id],
    user: Id,
    presence: Presence,
) {
    if friends.is_empty() {
        return;
    }
    let frame = |p: Presence| SyncEvent::Ephemeral {
        to: friends.to_vec(),
        except_device: None,
        frame: Arc::new(ServerFrame::Presence {
            user_id: user,
            status: p.status,
            last_seen: p.last_seen,
        }),
    };
    if let Err(e) = sync.publish(frame(presence)).await {
        tracing::warn!(error = %e, %user, "presence publish failed");
    }
    if let Ok(now) = service.status(&[user]).await
        && let Some(now) = now.first()
        && now.status != presence.status
    {
        let _ = sync.publish(frame(*now)).await;
    }
}

/// The presence of `users` to show a friend: the live status, and for an offline user the
/// later of the live and the persisted `last_seen`.
pub fn merge_last_seen(live: Presence, stored_last_seen: i64) -> Presence {
    match live.status {
        PresenceStatus::Online => live,
        PresenceStatus::Offline => Presence {
            status: PresenceStatus::Offline,
            last_seen: live.last_seen.max(stored_last_seen),
        },
    }
}
