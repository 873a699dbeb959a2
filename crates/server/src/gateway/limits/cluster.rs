//! A device's limits across the nodes of a cluster.
//!
//! Each node grants from its own buckets (no round trip on the hot path) and, every
//! [`EXCHANGE_EVERY`], adds what it granted per device to cluster-wide counters and reads
//! back what the other nodes granted meanwhile; that amount is charged to its own buckets as
//! a debt ([`super::SharedBucket`]). A device's buckets on every node therefore pay for every
//! grant in the cluster, one exchange late. The bound that follows: over any stretch of `t`
//! seconds a device is granted at most `burst + rate × (t + E)` sends (and likewise frames),
//! where `E` is the exchange interval plus a round trip to the shared backend: about a
//! second's worth of rate more than one node would grant.
//!
//! A node that meets a device for the first time (a socket on a node it has not used lately)
//! starts its buckets as empty as they are cluster-wide: the exchange also keeps a
//! cluster-wide GCRA cell per limit, read at the socket's `hello` ([`DeviceLimiters::prime`]),
//! so a new socket on another node buys no new burst.
//!
//! Typing is exact: a relay is claimed in the shared backend for [`super::TYPING_EVERY`]
//! ([`ClusterLimits::claim_typing`]) after the node's own check has passed.
//!
//! If the shared backend cannot be reached, each node keeps its own limits (the bound per
//! node) until it can: limits never refuse a client because Redis is down.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confab_protocol::Id;
use tokio::time::Instant;

use super::{DeviceLimiters, DeviceLimits, Kept};
use crate::config::GatewayConfig;

/// How often a node exchanges what it granted with the rest of the cluster.
pub const EXCHANGE_EVERY: Duration = Duration::from_millis(500);

/// The time one token takes to refill, per limit, in milliseconds: what the shared cell
/// advances by per grant.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    pub send_ms: f64,
    pub frame_ms: f64,
}

impl Periods {
    pub fn of(config: &GatewayConfig) -> Periods {
        // A rate of 0 never refills; an hour a token is as good as never for a cell that
        // expires a minute after its last use.
        let period = |rate: f64| {
            if rate > 0.0 {
                1000.0 / rate
            } else {
                3_600_000.0
            }
        };
        Periods {
            send_ms: period(config.send_rate_per_sec),
            frame_ms: period(config.frame_rate_per_sec),
        }
    }
}

/// What one node granted one device since its last exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub device: Id,
    pub sends: u64,
    pub frames: u64,
}

/// One device's cluster-wide state after an exchange.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchanged {
    /// Sends granted on all nodes so far (a counter that only grows).
    pub sends_total: u64,
    pub frames_total: u64,
    /// How many tokens below full the device's buckets are cluster-wide, now.
    pub sends_deficit: u64,
    pub frames_deficit: u64,
}

/// Where the nodes of a cluster share what they granted (Redis: [`super::redis`]).
#[async_trait]
pub trait ClusterLimits: Send + Sync {
    /// Adds each device's grants on this node to its cluster-wide counters and cell, and
    /// returns the state after, in the same order.
    async fn exchange(&self, periods: Periods, used: &[Used]) -> Result<Vec<Exchanged>, String>;
    /// Claims the one typing relay from `device` to `peer` allowed per `every`, cluster-wide:
    /// false if it was already claimed within `every`.
    async fn claim_typing(&self, device: Id, peer: Id, every: Duration) -> Result<bool, String>;
}

impl DeviceLimiters {
    /// Starts `device`'s limits on this node from the cluster's state, read at its socket's
    /// `hello`: buckets met here for the first time are charged the cluster-wide deficit. A
    /// device that already has limits here keeps them.
    pub fn prime(&self, device: Id, state: Exchanged) {
        let mut devices = self.devices();
        if devices.by_device.contains_key(&device) {
            return;
        }
        let limits = Arc::new(DeviceLimits::new(&self.config));
        limits.sends.charge(state.sends_deficit);
        limits.frames.charge(state.frames_deficit);
        devices.by_device.insert(
            device,
            Kept {
                limits,
                // Held by no socket yet: the sweep forgets it if none ever sends.
                released: Some(Instant::now()),
                seen: Some((state.sends_total, state.frames_total)),
            },
        );
    }

    /// One exchange of every kept device's grants with the cluster, charging each bucket what
    /// the other nodes granted since the last one. On failure the grants are reported next
    /// time.
    pub async fn exchange(&self, shared: &dyn ClusterLimits) -> Result<(), String> {
        let batch: Vec<(Arc<DeviceLimits>, Used)> = self
            .devices()
            .by_device
            .iter()
            .map(|(device, kept)| {
                let used = Used {
                    device: *device,
                    sends: kept.limits.sends.take_used(),
                    frames: kept.limits.frames.take_used(),
                };
                (kept.limits.clone(), used)
            })
            .collect();
        if batch.is_empty() {
            return Ok(());
        }
        let used: Vec<Used> = batch.iter().map(|(_, u)| *u).collect();
        let states = match shared.exchange(Periods::of(&self.config), &used).await {
            Ok(states) => states,
            Err(e) => {
                for (limits, used) in &batch {
                    limits.sends.unreport(used.sends);
                    limits.frames.unreport(used.frames);
                }
                return Err(e);
            }
        };
        let mut devices = self.devices();
        for ((limits, used), state) in batch.iter().zip(states) {
            let Some(kept) = devices.by_device.get_mut(&used.device) else {
                continue;
            };
            if !Arc::ptr_eq(&kept.limits, limits) {
                continue; // forgotten and made again meanwhile: the new one starts afresh
            }
            if let Some((sends, frames)) = kept.seen {
                // What the counters grew by, less this node's own part, is the others'. A
                // counter that shrank was lost in the backend: it starts over from here.
                limits
                    .sends
                    .charge(state.sends_total.saturating_sub(sends + used.sends));
                limits
                    .frames
                    .charge(state.frames_total.saturating_sub(frames + used.frames));
            }
            kept.seen = Some((state.sends_total, state.frames_total));
            limits.sends.settle();
            limits.frames.settle();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// The shared backend in memory: counters per device (the cell is not modelled).
    #[derive(Default)]
    struct Counters(Mutex<HashMap<Id, (u64, u64)>>);

    #[async_trait]
    impl ClusterLimits for Counters {
        async fn exchange(&self, _: Periods, used: &[Used]) -> Result<Vec<Exchanged>, String> {
            let mut all = self.0.lock().unwrap();
            Ok(used
                .iter()
                .map(|u| {
                    let c = all.entry(u.device).or_default();
                    c.0 += u.sends;
                    c.1 += u.frames;
                    Exchanged {
                        sends_total: c.0,
                        frames_total: c.1,
                        ..Exchanged::default()
                    }
                })
                .collect())
        }
        async fn claim_typing(&self, _: Id, _: Id, _: Duration) -> Result<bool, String> {
            Ok(true)
        }
    }

    fn config() -> GatewayConfig {
        GatewayConfig {
            send_rate_per_sec: 0.0,
            send_burst: 10,
            ..GatewayConfig::default()
        }
    }

    #[tokio::test]
    async fn what_one_node_grants_the_other_is_charged() {
        let shared = Counters::default();
        let (a, b) = (DeviceLimiters::new(config()), DeviceLimiters::new(config()));
        let device = Id(1);
        let (on_a, on_b) = (a.acquire(device), b.acquire(device));
        // Both learn the counters once, then the device spends 7 of its 10 on node A.
        a.exchange(&shared).await.unwrap();
        b.exchange(&shared).await.unwrap();
        assert_eq!((0..7).filter(|_| on_a.sends.take()).count(), 7);
        a.exchange(&shared).await.unwrap();
        b.exchange(&shared).await.unwrap();
        // Node B had 10; the 7 spent on A are paid from them at once.
        assert_eq!(on_b.sends.debt(), 0);
        assert_eq!((0..10).filter(|_| on_b.sends.take()).count(), 3);
        // And what B granted is charged back to A, which had 3 left.
        b.exchange(&shared).await.unwrap();
        a.exchange(&shared).await.unwrap();
        assert!(!on_a.sends.take(), "A paid for B's 3 with its last 3");
    }

    #[tokio::test]
    async fn a_debt_larger_than_the_bucket_waits_for_refills() {
        // 100 a second: a token each 10 ms, so the few microseconds of each step refill
        // nothing (one token at most on a machine that stalls).
        let limiters = DeviceLimiters::new(GatewayConfig {
            send_rate_per_sec: 100.0,
            send_burst: 10,
            ..GatewayConfig::default()
        });
        let lease = limiters.acquire(Id(1));
        lease.sends.charge(25);
        assert!(!lease.sends.take(), "the bucket's 10 go to the debt");
        assert!((14..=15).contains(&lease.sends.debt()));
        tokio::time::sleep(Duration::from_millis(150)).await; // full again: 10, the cap
        lease.sends.settle();
        assert!(
            (4..=5).contains(&lease.sends.debt()),
            "{}",
            lease.sends.debt()
        );
        assert!(
            !lease.sends.take(),
            "nothing is granted while a debt is owed"
        );
    }

    #[tokio::test]
    async fn a_device_new_to_a_node_starts_as_empty_as_it_is_cluster_wide() {
        let limiters = DeviceLimiters::new(config());
        limiters.prime(
            Id(1),
            Exchanged {
                sends_total: 40,
                frames_total: 40,
                sends_deficit: 8,
                frames_deficit: 0,
            },
        );
        let lease = limiters.acquire(Id(1));
        assert_eq!((0..10).filter(|_| lease.sends.take()).count(), 2);
        // Priming again does not reset limits already here.
        limiters.prime(Id(1), Exchanged::default());
        assert!(!lease.sends.take());
    }

    /// A backend that fails: nothing granted is lost from the count.
    struct Down;

    #[async_trait]
    impl ClusterLimits for Down {
        async fn exchange(&self, _: Periods, _: &[Used]) -> Result<Vec<Exchanged>, String> {
            Err("down".into())
        }
        async fn claim_typing(&self, _: Id, _: Id, _: Duration) -> Result<bool, String> {
            Err("down".into())
        }
    }

    #[tokio::test]
    async fn grants_are_reported_after_a_failed_exchange() {
        let (limiters, shared) = (DeviceLimiters::new(config()), Counters::default());
        let lease = limiters.acquire(Id(1));
        assert!(lease.sends.take() && lease.sends.take());
        assert!(limiters.exchange(&Down).await.is_err());
        limiters.exchange(&shared).await.unwrap();
        assert_eq!(shared.0.lock().unwrap()[&Id(1)], (2, 0));
    }
}
