//! The sequencer's node id, leased from Redis so that two live nodes never share one.
//!
//! A node claims the lowest free id in `0..=1023` ([`MAX_NODE`]) by
//! `SET <cluster>:node:<n> <token> NX PX <ttl>`, where `token` is random per process (one
//! Lua script tries the ids in order, so claiming is one round trip). It renews the key every
//! `ttl / 3` with a compare-and-set script (`PEXPIRE` only if the value is still its token).
//! [`NodeLease::lost`] is cancelled when a renewal finds the key gone or owned by another
//! token, or when no renewal has succeeded for 90 % of the ttl (the key may be about to
//! expire and be claimed by another node); the node must then stop making ids. A lease is
//! never regained: the process should restart (and lease a fresh id). [`NodeLease::release`]
//! deletes the key if it is still ours, so a clean restart can reuse the id at once; a node
//! that dies leaves the key to expire after `ttl`.
//!
//! Residual risk: a process paused (SIGSTOP, a frozen VM, heavy swapping) for longer than the
//! ttl loses its key while it cannot notice; another node may claim the id, and when the
//! paused process resumes it may make ids with that node id until its lease task runs and
//! cancels `lost()` (immediately on resume: the deadline has passed). In that window two
//! nodes can make the same id in the same millisecond. Likewise, a jump of the Redis host's
//! wall clock can expire the key early. Keep the ttl well above expected pauses (e.g. 10 s);
//! the store's uniqueness of message ids is the last line of defence.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::snowflake::MAX_NODE;
use crate::presence::redis::connect_manager;

/// Claims the lowest free id. ARGV: key prefix, token, ttl ms, highest id. Returns the id or -1.
const CLAIM: &str = r"
for n = 0, tonumber(ARGV[4]) do
  if redis.call('SET', ARGV[1] .. n, ARGV[2], 'NX', 'PX', ARGV[3]) then return n end
end
return -1
";

/// KEYS: the lease key. ARGV: token, ttl ms. Extends the key if it is ours: 1, else 0.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// KEYS: the lease key. ARGV: token. Deletes the key if it is ours: 1, else 0.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Why a lease could not be had.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("node-id lease unavailable: {0}")]
    Unavailable(String),
    #[error("every node id (0-{MAX_NODE}) is leased by another node")]
    Exhausted,
}

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable(e.to_string())
}

/// A node id held for as long as this process keeps renewing it.
pub struct NodeLease {
    conn: ConnectionManager,
    key: String,
    token: String,
    node_id: u16,
    lost: CancellationToken,
    /// Stops the renewal task (on release or drop).
    stop: CancellationToken,
}

impl NodeLease {
    /// Claims the lowest free node id of `cluster` for `ttl` and keeps renewing it in a task.
    pub async fn acquire(
        redis_url: &str,
        cluster: &str,
        ttl: Duration,
    ) -> Result<NodeLease, LeaseError> {
        let conn = connect_manager(redis_url).await.map_err(unavailable)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(3);
        let ttl = Duration::from_millis(ttl_ms);
        let prefix = format!("{cluster}:node:");
        let token = format!("{:032x}", rand::random::<u128>());
        let sent = Instant::now();
        let n: i64 = Script::new(CLAIM)
            .arg(&prefix)
            .arg(&token)
            .arg(ttl_ms)
            .arg(MAX_NODE)
            .invoke_async(&mut conn.clone())
            .await
            .map_err(unavailable)?;
        let node_id = u16::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_NODE)
            .ok_or(LeaseError::Exhausted)?;
        let lease = NodeLease {
            key: format!("{prefix}{node_id}"),
            conn,
            token,
            node_id,
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
        };
        tokio::spawn(renew(
            lease.conn.clone(),
            lease.key.clone(),
            lease.token.clone(),
            ttl,
            sent,
            lease.lost.clone(),
            lease.stop.clone(),
        ));
        tracing::info!(node_id, "leased sequencer node id");
        Ok(lease)
    }

    /// The leased id, for [`super::Sequencer::new`].
    pub fn node_id(&self) -> u16 {
        self.node_id
    }

    /// Cancelled once the lease may be held by someone else; from then on this node must not
    /// make ids. Never un-cancelled.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and deletes the key if it is still ours, freeing the id at once.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.stop.cancel();
        let deleted: i64 = Script::new(RELEASE)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if deleted == 0 {
            tracing::warn!(
                node_id = self.node_id,
                "node-id lease was no longer ours at release"
            );
        }
        Ok(())
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        // Without `release` the key expires after the ttl.
        self.stop.cancel();
    }
}

/// Renews the lease every `ttl / 3` until stopped; cancels `lost` when the key is not ours
/// any more or has not been renewed for 90 % of the ttl.
async fn renew(
    mut conn: ConnectionManager,
    key: String,
    token: String,
    ttl: Duration,
    acquired: Instant,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let script = Script::new(RENEW);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let every = ttl / 3;
    // The key expires `ttl` after Redis ran the last successful renewal, which is after we
    // sent it; 10 % margin for timers and for the caller to react.
    let margin = ttl / 10;
    let mut deadline = acquired + ttl - margin;
    let mut next = Instant::now() + every;
    let lose = |why: &str| {
        tracing::error!(
            key,
            why,
            "node-id lease lost; this node must stop making ids"
        );
        lost.cancel();
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return lose("not renewed in time"),
            () = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        let mut invocation = script.key(&key);
        invocation.arg(&token).arg(ttl_ms);
        let attempt = invocation.invoke_async::<i64>(&mut conn);
        let result = tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(deadline) => return lose("not renewed in time"),
            r = attempt => r,
        };
        match result {
            Ok(1) => {
                deadline = sent + ttl - margin;
                next = sent + every;
            }
            Ok(_) => return lose("the key expired or another node holds it"),
            Err(e) => {
                tracing::warn!(error = %e, key, "node-id lease renewal failed; retrying");
                next = Instant::now() + every / 3;
            }
        }
    }
}
