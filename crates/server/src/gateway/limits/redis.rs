//! A cluster's shared use of each device's limits, in Redis (see [`super::cluster`]).
//!
//! Keys, with `L` = `<cluster>:limits:`:
//!
//! - `L d:<device>`: hash. `s` and `f`: how many sends and frames the device's sockets have
//!   been granted on all nodes together (counters only ever added to); `ts` and `tf`: the
//!   theoretical arrival time (ms, Redis clock) of a cluster-wide GCRA cell per limit, which
//!   says how far below full the device's buckets are cluster-wide. Expires a minute after
//!   the last exchange that named it.
//! - `L t:<device>:<peer>`: set with `NX PX` when a typing relay from the device to the peer
//!   goes out anywhere; while it exists, no other node relays one.

use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::Id;
use redis::Script;
use redis::aio::ConnectionManager;

use super::cluster::{ClusterLimits, Exchanged, Periods, Used};
use crate::presence::redis::connect_manager;

/// How long a device's counters outlive the last exchange that named it: every node holding
/// the device renews it each exchange, so this only bounds what is left behind.
const KEEP_MS: u64 = 60_000;
/// Most devices one script call handles: a script blocks Redis while it runs.
const BATCH: usize = 500;

/// ARGV: key prefix, send period (ms per token), frame period, keep (ms), then per device
/// its id, sends granted and frames granted since the last exchange. Returns per device the
/// counters after the addition and the cluster-wide deficit of each bucket in tokens.
const EXCHANGE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local send_period, frame_period = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 5, #ARGV, 3 do
  local key = ARGV[1] .. ARGV[i]
  local sends, frames = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local s = redis.call('HINCRBY', key, 's', sends)
  local f = redis.call('HINCRBY', key, 'f', frames)
  local ts = math.max(tonumber(redis.call('HGET', key, 'ts') or '0'), now) + sends * send_period
  local tf = math.max(tonumber(redis.call('HGET', key, 'tf') or '0'), now) + frames * frame_period
  redis.call('HSET', key, 'ts', tostring(ts), 'tf', tostring(tf))
  redis.call('PEXPIRE', key, ARGV[4])
  out[#out + 1] = s
  out[#out + 1] = f
  out[#out + 1] = math.floor((ts - now) / send_period)
  out[#out + 1] = math.floor((tf - now) / frame_period)
end
return out
";

/// The cluster's shared limits in Redis.
pub struct RedisLimits {
    conn: ConnectionManager,
    prefix: String,
    script: Script,
}

impl RedisLimits {
    pub async fn connect(url: &str, cluster: &str) -> Result<RedisLimits, String> {
        let conn = connect_manager(url).await.map_err(|e| e.to_string())?;
        Ok(RedisLimits {
            conn,
            prefix: format!("{cluster}:limits:"),
            script: Script::new(EXCHANGE),
        })
    }
}

#[async_trait]
impl ClusterLimits for RedisLimits {
    async fn exchange(&self, periods: Periods, used: &[Used]) -> Result<Vec<Exchanged>, String> {
        let mut out = Vec::with_capacity(used.len());
        for chunk in used.chunks(BATCH) {
            let mut call = self.script.prepare_invoke();
            call.arg(format!("{}d:", self.prefix))
                .arg(periods.send_ms)
                .arg(periods.frame_ms)
                .arg(KEEP_MS);
            for u in chunk {
                call.arg(u.device.0).arg(u.sends).arg(u.frames);
            }
            let reply: Vec<i64> = call
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            if reply.len() != chunk.len() * 4 {
                return Err(format!(
                    "limits exchange answered {} numbers for {} devices",
                    reply.len(),
                    chunk.len()
                ));
            }
            let count = |v: i64| u64::try_from(v).unwrap_or(0);
            out.extend(reply.chunks_exact(4).map(|r| Exchanged {
                sends_total: count(r[0]),
                frames_total: count(r[1]),
                sends_deficit: count(r[2]),
                frames_deficit: count(r[3]),
            }));
        }
        Ok(out)
    }

    async fn claim_typing(&self, device: Id, peer: Id, every: Duration) -> Result<bool, String> {
        let key = format!("{}t:{}:{}", self.prefix, device.0, peer.0);
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(every.as_millis()).unwrap_or(u64::MAX))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }
}
