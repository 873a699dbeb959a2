//! Presence of a cluster, in Redis.
//!
//! A user is online while any of its sockets, on any node, is registered and unexpired. Every
//! socket has an expiry time; the node that registered it renews it every `socket_ttl / 3`,
//! so a node that dies stops renewing and its sockets expire within `socket_ttl`. Every node
//! calls [`PresenceService::sweep`] every few seconds; the sweep removes expired sockets and
//! reports the users that thereby went offline.
//!
//! Keys, with `P` = `<cluster>:presence:`:
//!
//! - `P u:<user>`: sorted set, the user's socket ids scored by expiry (ms, Redis clock);
//! - `P sockets`: sorted set, `<user>:<socket>` for every socket of the cluster, scored by
//!   the same expiry, so a sweep finds the expired ones without scanning users;
//! - `P last_seen`: hash, user → the last time (ms) the user was known online;
//! - `P d:<user>`: hash, the user's socket ids → each one's device, for the push server's
//!   presence check (which devices have a live socket); an entry goes with its socket.
//!
//! Every change is one Lua script, so it is atomic, and the scripts keep one rule: **the
//! call that takes a user's socket set from non-empty to empty reports the user offline**
//! (`disconnected` returning true, or `sweep` listing it), and the call that adds a socket
//! to a set with no unexpired socket reports it online (`connected` returning true). A set
//! empties once per online period and only inside one script, so each transition is seen by
//! exactly one caller cluster-wide, however many nodes call at once. Expired sockets are
//! removed by whichever script meets them first: `connected` drops the user's expired
//! sockets before adding (the user was implicitly offline, and is online again, so only
//! "online" is reported); `disconnected` and `sweep` report the user if the set ends empty.
//!
//! Expiry uses the Redis server's clock (`TIME` inside the scripts), so nodes with skewed
//! clocks agree on what has expired; `last_seen` written by `connected`/`disconnected` is
//! the caller's `now`, and a swept user's `last_seen` is the expiry of its last socket.
//!
//! A node that was cut off from Redis (or paused) for longer than `socket_ttl` has its
//! sockets swept and its users announced offline; when its renewal reaches Redis again it
//! puts the sockets back (they are still connected), so `status` is right again, but no one
//! is told "online" until the user's next transition (the trait has no way to report it).
//!
//! Not supported: Redis Cluster (the scripts touch keys they compute; all keys would need one
//! hash tag and a cluster client).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::{Id, Presence, PresenceStatus};
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{PresenceError, PresenceService};

/// How long one Redis call (and connecting) may take before presence counts as unavailable.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before the connection manager's one retry of a failed connection attempt.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Most sockets one renewal or sweep script handles, and most users one status script reads:
/// a script blocks Redis while it runs, so each stays short.
const BATCH: usize = 1000;
/// Most batches one `sweep` call runs; the next call continues.
const MAX_SWEEP_BATCHES: usize = 100;

/// The current time in ms by the Redis server's clock (prepended to the scripts).
const NOW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: user set, cluster set, last_seen, user's devices. ARGV: user, socket, ttl ms,
/// caller's now, device. Drops the user's expired sockets, adds this one; returns 1 if the
/// user had no unexpired socket before (it just came online), else 0.
const CONNECTED: &str = r"
local member = ARGV[1] .. ':'
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], s)
  redis.call('ZREM', KEYS[2], member .. s)
  redis.call('HDEL', KEYS[4], s)
end
local live = redis.call('ZCARD', KEYS[1])
local expiry = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
redis.call('ZADD', KEYS[2], expiry, member .. ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[5])
if live == 0 then return 1 end
return 0
";

/// KEYS: user set, cluster set, last_seen, user's devices. ARGV: user, socket, caller's now.
/// Removes the socket and the user's expired sockets; returns 1 if that emptied the user's
/// set (it just went offline), else 0.
const DISCONNECTED: &str = r"
local member = ARGV[1] .. ':'
local had = redis.call('ZCARD', KEYS[1])
local removed = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], member .. ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], s)
  redis.call('ZREM', KEYS[2], member .. s)
  redis.call('HDEL', KEYS[4], s)
end
local offline = had > 0 and redis.call('ZCARD', KEYS[1]) == 0
if removed == 1 or offline then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
end
if offline then return 1 end
return 0
";

/// KEYS: cluster set, last_seen. ARGV: user-set key prefix, batch size, devices key prefix.
/// Removes up to a batch of expired sockets; returns `scanned, user, last_seen, user, …`
/// listing each user whose set this emptied, with the expiry of its last socket.
const SWEEP: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local latest, touched = {}, {}
for i = 1, #due, 2 do
  local member, expiry = due[i], tonumber(due[i + 1])
  local sep = string.find(member, ':', 1, true)
  local kept = false
  if sep then
    local user, socket = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    local key = ARGV[1] .. user
    local score = redis.call('ZSCORE', key, socket)
    if score and tonumber(score) > now then
      -- Renewed in the user's set but not here (should not happen): trust the user's set.
      redis.call('ZADD', KEYS[1], score, member)
      kept = true
    elseif score then
      redis.call('ZREM', key, socket)
      redis.call('HDEL', ARGV[3] .. user, socket)
      if latest[user] == nil then
        touched[#touched + 1] = user
        latest[user] = expiry
      elseif expiry > latest[user] then
        latest[user] = expiry
      end
    end
  end
  if not kept then redis.call('ZREM', KEYS[1], member) end
end
local out = { #due / 2 }
for _, user in ipairs(touched) do
  local key = ARGV[1] .. user
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do
    redis.call('ZREM', key, s)
    redis.call('ZREM', KEYS[1], user .. ':' .. s)
    redis.call('HDEL', ARGV[3] .. user, s)
  end
  if redis.call('ZCARD', key) == 0 then
    local seen = latest[user]
    local old = tonumber(redis.call('HGET', KEYS[2], user) or '0')
    if old and old > seen then seen = old end
    redis.call('HSET', KEYS[2], user, string.format('%d', seen))
    out[#out + 1] = user
    out[#out + 1] = string.format('%d', seen)
  end
end
return out
";

/// KEYS: cluster set. ARGV: user-set key prefix, ttl ms, then user, socket, user, socket, …
/// Pushes the expiry of those sockets to now + ttl, adding back any that were swept; returns
/// how many were added back.
const RENEW: &str = r"
local expiry = now + tonumber(ARGV[2])
local back = 0
for i = 3, #ARGV, 2 do
  back = back + redis.call('ZADD', ARGV[1] .. ARGV[i], expiry, ARGV[i + 1])
  redis.call('ZADD', KEYS[1], expiry, ARGV[i] .. ':' .. ARGV[i + 1])
end
return back
";

/// KEYS: last_seen. ARGV: user-set key prefix, then users.
/// Returns `online, last_seen` per user (online 1 or 0).
const STATUS: &str = r"
local out = {}
for i = 2, #ARGV do
  local user = ARGV[i]
  local top = redis.call('ZREVRANGE', ARGV[1] .. user, 0, 0, 'WITHSCORES')
  local seen = tonumber(redis.call('HGET', KEYS[1], user) or '0') or 0
  local online = 0
  if #top == 2 then
    local expiry = tonumber(top[2])
    if expiry > now then
      online = 1
    elseif expiry > seen then
      seen = expiry
    end
  end
  out[#out + 1] = online
  out[#out + 1] = seen
end
return out
";

/// ARGV: user-set key prefix, devices key prefix, then users.
/// Returns the devices of the users' unexpired sockets.
const ONLINE_DEVICES: &str = r"
local out = {}
for i = 3, #ARGV do
  local live = redis.call('ZRANGEBYSCORE', ARGV[1] .. ARGV[i], '(' .. string.format('%d', now), '+inf')
  if #live > 0 then
    for _, d in ipairs(redis.call('HMGET', ARGV[2] .. ARGV[i], unpack(live))) do
      if d then out[#out + 1] = d end
    end
  end
end
return out
";

/// The keys of one cluster's presence.
#[derive(Clone, Debug)]
struct Keys {
    /// Prefix of the per-user socket sets; the user id follows.
    user_prefix: String,
    /// Prefix of the per-user socket → device hashes; the user id follows.
    devices_prefix: String,
    sockets: String,
    last_seen: String,
}

impl Keys {
    fn new(cluster: &str) -> Keys {
        Keys {
            user_prefix: format!("{cluster}:presence:u:"),
            devices_prefix: format!("{cluster}:presence:d:"),
            sockets: format!("{cluster}:presence:sockets"),
            last_seen: format!("{cluster}:presence:last_seen"),
        }
    }

    fn user(&self, user: Id) -> String {
        format!("{}{user}", self.user_prefix)
    }

    fn devices(&self, user: Id) -> String {
        format!("{}{user}", self.devices_prefix)
    }
}

struct Scripts {
    connected: Script,
    disconnected: Script,
    sweep: Script,
    renew: Script,
    status: Script,
    online_devices: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{NOW}{body}"));
        Scripts {
            connected: script(CONNECTED),
            disconnected: script(DISCONNECTED),
            sweep: script(SWEEP),
            renew: script(RENEW),
            status: script(STATUS),
            online_devices: script(ONLINE_DEVICES),
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

/// Opens a connection manager that gives up quickly, so callers see `Unavailable` instead of
/// waiting; it reconnects by itself on the next call.
pub(crate) async fn connect_manager(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    // One retry, half a second (plus the library's jitter) after a failed attempt. The first
    // pause is `min_delay`, which `max_delay` does not bound, so both are set.
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(RETRY_PAUSE)
        .set_max_delay(RETRY_PAUSE)
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    match tokio::time::timeout(
        TIMEOUT * 3,
        client.get_connection_manager_with_config(config),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "connecting to redis timed out",
        ))),
    }
}

/// State shared with the renewal task.
struct Shared {
    conn: ConnectionManager,
    keys: Keys,
    scripts: Scripts,
    ttl_ms: u64,
    /// Sockets this process registered and keeps alive. Locked across a renewal's round trip,
    /// so that a socket removed here is never renewed (re-added) after its `disconnected`.
    mine: Mutex<HashSet<(Id, u64)>>,
}

impl Shared {
    /// Renews every socket this process holds, a batch per round trip.
    async fn renew(&self) -> Result<(), PresenceError> {
        let all: Vec<(Id, u64)> = self.mine.lock().await.iter().copied().collect();
        for chunk in all.chunks(BATCH) {
            let mine = self.mine.lock().await;
            let mut invocation = self.scripts.renew.prepare_invoke();
            invocation
                .key(&self.keys.sockets)
                .arg(&self.keys.user_prefix)
                .arg(self.ttl_ms);
            let mut any = false;
            for pair in chunk {
                if mine.contains(pair) {
                    invocation.arg(pair.0.0).arg(pair.1);
                    any = true;
                }
            }
            if !any {
                continue;
            }
            let back: i64 = invocation
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            drop(mine);
            if back > 0 {
                tracing::warn!(
                    sockets = back,
                    "presence: sockets of this node had expired and were swept; re-registered them"
                );
            }
        }
        Ok(())
    }
}

/// Presence shared by the nodes of a cluster through Redis.
pub struct RedisPresence {
    shared: Arc<Shared>,
    _stop_renewing: DropGuard,
}

impl RedisPresence {
    /// Connects to Redis at `url` for the cluster called `cluster`. Sockets registered
    /// through this instance expire `socket_ttl` after their last renewal; it renews them
    /// every `socket_ttl / 3` until it is dropped.
    pub async fn connect(
        url: &str,
        cluster: &str,
        socket_ttl: Duration,
    ) -> Result<RedisPresence, PresenceError> {
        let conn = connect_manager(url).await.map_err(unavailable)?;
        let ttl_ms = u64::try_from(socket_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(3);
        let shared = Arc::new(Shared {
            conn,
            keys: Keys::new(cluster),
            scripts: Scripts::new(),
            ttl_ms,
            mine: Mutex::new(HashSet::new()),
        });
        let stop = CancellationToken::new();
        let (task_shared, task_stop) = (shared.clone(), stop.clone());
        let every = Duration::from_millis(ttl_ms / 3);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = task_stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Err(e) = task_shared.renew().await {
                    tracing::warn!(error = %e, "presence renewal failed");
                }
            }
        });
        Ok(RedisPresence {
            shared,
            _stop_renewing: stop.drop_guard(),
        })
    }

    fn conn(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }
}

#[async_trait]
impl PresenceService for RedisPresence {
    async fn connected(
        &self,
        user: Id,
        device: Id,
        socket: u64,
        now: i64,
    ) -> Result<bool, PresenceError> {
        let s = &self.shared;
        let first: i64 = s
            .scripts
            .connected
            .key(s.keys.user(user))
            .key(&s.keys.sockets)
            .key(&s.keys.last_seen)
            .key(s.keys.devices(user))
            .arg(user.0)
            .arg(socket)
            .arg(s.ttl_ms)
            .arg(now)
            .arg(device.0)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        s.mine.lock().await.insert((user, socket));
        Ok(first == 1)
    }

    async fn disconnected(&self, user: Id, socket: u64, now: i64) -> Result<bool, PresenceError> {
        let s = &self.shared;
        // First stop renewing it (waiting out a renewal in flight), so it cannot come back.
        s.mine.lock().await.remove(&(user, socket));
        let last: i64 = s
            .scripts
            .disconnected
            .key(s.keys.user(user))
            .key(&s.keys.sockets)
            .key(&s.keys.last_seen)
            .key(s.keys.devices(user))
            .arg(user.0)
            .arg(socket)
            .arg(now)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(last == 1)
    }

    async fn status(&self, users: &[Id]) -> Result<Vec<Presence>, PresenceError> {
        let s = &self.shared;
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(BATCH) {
            let mut invocation = s.scripts.status.prepare_invoke();
            invocation.key(&s.keys.last_seen).arg(&s.keys.user_prefix);
            for user in chunk {
                invocation.arg(user.0);
            }
            let flat: Vec<i64> = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if flat.len() != chunk.len() * 2 {
                return Err(unavailable(
                    "presence status script answered the wrong shape",
                ));
            }
            out.extend(flat.chunks_exact(2).map(|p| Presence {
                status: if p[0] == 1 {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                },
                last_seen: p[1],
            }));
        }
        Ok(out)
    }

    async fn online_devices(&self, users: &[Id]) -> Result<HashSet<Id>, PresenceError> {
        let s = &self.shared;
        let mut out = HashSet::new();
        for chunk in users.chunks(BATCH) {
            let mut invocation = s.scripts.online_devices.prepare_invoke();
            invocation
                .arg(&s.keys.user_prefix)
                .arg(&s.keys.devices_prefix);
            for user in chunk {
                invocation.arg(user.0);
            }
            let devices: Vec<u64> = invocation
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            out.extend(devices.into_iter().map(Id));
        }
        Ok(out)
    }

    async fn check(&self) -> Result<(), PresenceError> {
        let (mut conn, ping) = (self.conn(), redis::cmd("PING"));
        tokio::time::timeout(TIMEOUT, ping.query_async::<String>(&mut conn))
            .await
            .map_err(|_| unavailable("redis ping timed out"))?
            .map(drop)
            .map_err(unavailable)
    }

    /// Uses the Redis server's clock, not `now`, to decide what has expired.
    async fn sweep(&self, _now: i64) -> Result<Vec<(Id, i64)>, PresenceError> {
        let s = &self.shared;
        let mut gone = Vec::new();
        for _ in 0..MAX_SWEEP_BATCHES {
            let flat: Vec<String> = s
                .scripts
                .sweep
                .key(&s.keys.sockets)
                .key(&s.keys.last_seen)
                .arg(&s.keys.user_prefix)
                .arg(BATCH)
                .arg(&s.keys.devices_prefix)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let (scanned, pairs) = flat
                .split_first()
                .ok_or_else(|| unavailable("presence sweep script answered nothing"))?;
            for pair in pairs.chunks_exact(2) {
                match (pair[0].parse(), pair[1].parse()) {
                    (Ok(user), Ok(seen)) => gone.push((Id(user), seen)),
                    _ => tracing::warn!(?pair, "presence sweep: unparsable entry skipped"),
                }
            }
            if scanned.parse::<usize>().unwrap_or(0) < BATCH {
                break;
            }
        }
        Ok(gone)
    }
}
