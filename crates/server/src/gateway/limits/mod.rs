//! Rate limits per device: every socket of one device on this node takes from the same
//! limiters, so opening more sockets buys a client nothing (PROTOCOL.md, Guarantee 8).
//!
//! A device's limiters are made with its first socket on this node that sends a frame
//! ([`DeviceLimiters::acquire`]) and kept after its last one closes until they would be full
//! again: closing sockets and opening new ones (or switching to one that was open but quiet)
//! gives back nothing that waiting would not. Each limiter is governor's GCRA cell, one atomic
//! word updated by compare-and-swap: sockets of one device on different threads do not queue
//! on a lock to send.
//!
//! In a cluster each node keeps the limiters of the sockets it holds, and the nodes share what
//! they granted once per [`cluster::EXCHANGE_EVERY`]: each node's buckets are charged what the
//! device was granted on the others ([`SharedBucket`]'s debt), so the device's limits hold
//! across the cluster within about one exchange interval of rate (see [`cluster`]).

pub mod cluster;
pub mod redis;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_protocol::Id;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::GatewayConfig;

/// Typing relays allowed per peer per device.
pub const TYPING_EVERY: Duration = Duration::from_secs(1);
/// Peers a device remembers typing to before it forgets the ones past [`TYPING_EVERY`].
const TYPING_PEERS: usize = 1024;

/// A token bucket: `rate` tokens a second, holding at most `burst`, full at the start.
pub struct TokenBucket<C: Clock = DefaultClock>(
    RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
);

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        Self::with_clock(rate, burst, DefaultClock::default())
    }
}

impl<C: Clock> TokenBucket<C> {
    fn with_clock(rate: f64, burst: u32, clock: C) -> Self {
        TokenBucket(RateLimiter::direct_with_clock(quota(rate, burst), clock))
    }

    /// Takes one token if there is one.
    pub fn take(&self) -> bool {
        self.0.check().is_ok()
    }
}

/// `rate` a second with bursts of `burst` as governor's quota. A rate of 0 (or one too small
/// to represent) refills as slowly as the cell can count, which is never in practice.
fn quota(rate: f64, burst: u32) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    // The cell holds `period × burst` in nanoseconds in a u64: keep it well inside.
    let longest = Duration::from_nanos(u64::MAX / 4 / u64::from(burst.get()));
    let period = Duration::try_from_secs_f64(1.0 / rate)
        .ok()
        .filter(|p| !p.is_zero())
        .map_or(longest, |p| p.min(longest));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// A device's bucket on this node, which also pays for what the device was granted on other
/// nodes of the cluster.
///
/// What other nodes granted arrives as a debt ([`SharedBucket::charge`]): every token the
/// bucket yields goes to the debt first, so a device that spent its budget elsewhere gets
/// nothing here until it has waited as long as one node would have made it wait. Governor's
/// cell cannot go below empty, hence the separate count.
pub struct SharedBucket {
    bucket: TokenBucket,
    /// Tokens granted here since the last exchange (what the other nodes will be charged).
    used: AtomicU64,
    /// Tokens granted on other nodes that this bucket has not paid for yet.
    debt: AtomicU64,
}

impl SharedBucket {
    fn new(rate: f64, burst: u32) -> Self {
        SharedBucket {
            bucket: TokenBucket::new(rate, burst),
            used: AtomicU64::new(0),
            debt: AtomicU64::new(0),
        }
    }

    /// Takes one token if there is one after the debt is paid.
    pub fn take(&self) -> bool {
        // Each token goes to the debt while there is one; the loop ends when the bucket is
        // empty or a token is left over for this frame (at most a burst of iterations).
        loop {
            if !self.bucket.take() {
                return false;
            }
            if self.pay_one().is_err() {
                self.used.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
    }

    /// Pays one token of the debt; `Err` if there was none.
    fn pay_one(&self) -> Result<u64, u64> {
        self.debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
    }

    /// Adds `tokens` granted elsewhere to the debt.
    fn charge(&self, tokens: u64) {
        if tokens > 0 {
            self.debt.fetch_add(tokens, Ordering::AcqRel);
        }
    }

    /// Pays the debt from what the bucket holds now, so that tokens refilled while the
    /// device was quiet here are not lost to the bucket's cap.
    fn settle(&self) {
        while self.debt.load(Ordering::Acquire) > 0 && self.bucket.take() {
            if self.pay_one().is_err() {
                // Another socket paid the last of it meanwhile: the token was this bucket's,
                // and counts as granted here.
                self.used.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The tokens granted here since the last call.
    fn take_used(&self) -> u64 {
        self.used.swap(0, Ordering::AcqRel)
    }

    /// Gives back a count [`Self::take_used`] took, for an exchange that failed.
    fn unreport(&self, used: u64) {
        self.used.fetch_add(used, Ordering::AcqRel);
    }

    #[cfg(test)]
    fn debt(&self) -> u64 {
        self.debt.load(Ordering::Acquire)
    }
}

/// The limits one device's sockets on this node share.
pub struct DeviceLimits {
    /// `send` frames (`send_rate_per_sec`, `send_burst`).
    pub sends: SharedBucket,
    /// Client frames of any kind (`frame_rate_per_sec`, `frame_burst`).
    pub frames: SharedBucket,
    /// When a typing relay to each peer last went out.
    typing: Mutex<HashMap<Id, Instant>>,
}

impl DeviceLimits {
    fn new(config: &GatewayConfig) -> Self {
        DeviceLimits {
            sends: SharedBucket::new(config.send_rate_per_sec, config.send_burst),
            frames: SharedBucket::new(config.frame_rate_per_sec, config.frame_burst),
            typing: Mutex::default(),
        }
    }

    /// Whether a `typing` to `to` may be relayed now: at most once per [`TYPING_EVERY`] per
    /// peer, whichever of the device's sockets sends it.
    pub fn typing_due(&self, to: Id) -> bool {
        let now = Instant::now();
        let mut typing = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        let due = typing
            .get(&to)
            .is_none_or(|t| now.duration_since(*t) >= TYPING_EVERY);
        if due {
            if typing.len() > TYPING_PEERS {
                typing.retain(|_, t| now.duration_since(*t) < TYPING_EVERY);
            }
            typing.insert(to, now);
        }
        due
    }
}

/// This node's [`DeviceLimits`], by device, for as long as the device has a socket here that
/// took them, and then until its buckets would be full again.
pub struct DeviceLimiters {
    config: GatewayConfig,
    /// How long a device's limits outlive its last socket: the longest time any of its buckets
    /// takes to refill from empty (see [`refill_time`]).
    keep: Duration,
    devices: Mutex<Devices>,
}

struct Devices {
    by_device: HashMap<Id, Kept>,
    /// When the next acquire forgets the limits nobody has held for `keep`.
    next_sweep: Instant,
}

struct Kept {
    limits: Arc<DeviceLimits>,
    /// When the device's last socket here let go of them; `None` while one holds them.
    released: Option<Instant>,
    /// The cluster-wide counts of sends and frames granted to the device, as of this node's
    /// last exchange (see [`cluster`]); `None` before the first.
    seen: Option<(u64, u64)>,
}

impl DeviceLimiters {
    pub fn new(config: GatewayConfig) -> Self {
        let keep = refill_time(&config);
        DeviceLimiters {
            config,
            keep,
            devices: Mutex::new(Devices {
                by_device: HashMap::new(),
                next_sweep: Instant::now() + keep,
            }),
        }
    }

    fn devices(&self) -> std::sync::MutexGuard<'_, Devices> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limits of `device`, shared with its other sockets on this node and with the ones
    /// that closed while its buckets refill (made if there are none). Taken once per socket,
    /// at its first frame: the hot path only touches the result.
    pub fn acquire(&self, device: Id) -> DeviceLease<'_> {
        let now = Instant::now();
        let mut devices = self.devices();
        if now >= devices.next_sweep {
            self.sweep(&mut devices, now);
        }
        let kept = devices.by_device.entry(device).or_insert_with(|| Kept {
            limits: Arc::new(DeviceLimits::new(&self.config)),
            released: None,
            seen: None,
        });
        kept.released = None;
        DeviceLease {
            owner: self,
            device,
            limits: kept.limits.clone(),
        }
    }

    /// Forgets the limits that no socket has held for `keep`: they are full again, and a new
    /// set is the same. Amortised: at most once per `keep`, from [`Self::acquire`].
    fn sweep(&self, devices: &mut Devices, now: Instant) {
        let keep = self.keep;
        devices
            .by_device
            .retain(|_, k| k.released.is_none_or(|at| now.duration_since(at) < keep));
        devices.next_sweep = now + keep;
    }

    /// Devices with limits kept now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.devices().by_device.len()
    }

    /// Sweeps as an acquire at `now` would (for tests).
    #[cfg(test)]
    fn sweep_at(&self, now: Instant) {
        let mut devices = self.devices();
        self.sweep(&mut devices, now);
    }
}

/// Longest a device's limits may take to refill from empty: the send and frame buckets
/// (burst / rate) and the typing interval, at most [`LONGEST_KEEP`] (a rate of 0 never refills).
fn refill_time(config: &GatewayConfig) -> Duration {
    let refill = |burst: u32, rate: f64| {
        Duration::try_from_secs_f64(f64::from(burst) / rate).unwrap_or(LONGEST_KEEP)
    };
    refill(config.send_burst, config.send_rate_per_sec)
        .max(refill(config.frame_burst, config.frame_rate_per_sec))
        .max(TYPING_EVERY)
        .min(LONGEST_KEEP)
}

/// The longest a device's limits outlive its sockets, whatever the rates: bounds the memory
/// of devices that came and went.
const LONGEST_KEEP: Duration = Duration::from_secs(3600);

/// One socket's hold on its device's limits; the last one to go forgets them.
pub struct DeviceLease<'a> {
    owner: &'a DeviceLimiters,
    device: Id,
    limits: Arc<DeviceLimits>,
}

impl std::ops::Deref for DeviceLease<'_> {
    type Target = DeviceLimits;
    fn deref(&self) -> &DeviceLimits {
        &self.limits
    }
}

impl Drop for DeviceLease<'_> {
    fn drop(&mut self) {
        let mut devices = self.owner.devices();
        // Under the map's lock no other socket of the device can take the limits meanwhile:
        // the map's hold and this one are the last two when this is the last socket.
        if let Some(kept) = devices.by_device.get_mut(&self.device)
            && Arc::strong_count(&self.limits) == 2
        {
            kept.released = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn burst_then_rate() {
        let clock = FakeRelativeClock::default();
        let b = TokenBucket::with_clock(20.0, 100, clock.clone());
        assert!((0..100).all(|_| b.take()));
        assert!(!b.take());
        // 20/s: one token every 50 ms.
        clock.advance(Duration::from_millis(50));
        assert!(b.take());
        clock.advance(Duration::from_millis(10));
        assert!(!b.take());
        // A client at exactly 20/s after its burst is never limited.
        for _ in 0..1000 {
            clock.advance(Duration::from_millis(50));
            assert!(b.take());
        }
    }

    #[test]
    fn a_zero_rate_gives_the_burst_only() {
        let clock = FakeRelativeClock::default();
        let b = TokenBucket::with_clock(0.0, 3, clock.clone());
        assert!((0..3).all(|_| b.take()));
        clock.advance(Duration::from_secs(3600));
        assert!(!b.take());
    }

    #[test]
    fn sockets_of_one_device_share_its_limits_until_the_last_goes() {
        let limiters = DeviceLimiters::new(GatewayConfig {
            send_burst: 5,
            ..GatewayConfig::default()
        });
        let first = limiters.acquire(Id(7));
        let second = limiters.acquire(Id(7));
        let other = limiters.acquire(Id(8));
        // The two sockets of device 7 take from one burst of 5.
        let taken = (0..10)
            .filter(|i| if i % 2 == 0 { &first } else { &second }.sends.take())
            .count();
        assert_eq!(taken, 5);
        assert!(other.sends.take(), "another device has its own");
        assert!(first.typing_due(Id(9)));
        assert!(!second.typing_due(Id(9)), "typing is per device and peer");
        assert!(second.typing_due(Id(10)));
        drop(first);
        assert_eq!(limiters.len(), 2, "device 7 still has a socket");
        drop(second);
        // Closing every socket and opening another buys nothing: the limits are kept until
        // they would be full again.
        let reopened = limiters.acquire(Id(7));
        assert!(
            !reopened.sends.take(),
            "a reopened socket finds the burst spent"
        );
        drop(reopened);
        let later = Instant::now() + limiters.keep;
        limiters.sweep_at(later);
        assert_eq!(
            limiters.len(),
            1,
            "forgotten with its last socket, once full again"
        );
        let again = limiters.acquire(Id(7));
        assert!(
            again.sends.take(),
            "a new first socket starts with a full burst"
        );
        drop((again, other));
        limiters.sweep_at(later + limiters.keep);
        assert_eq!(limiters.len(), 0);
    }

    #[test]
    fn limits_are_kept_as_long_as_the_slowest_bucket_refills() {
        let config = GatewayConfig {
            send_rate_per_sec: 20.0,
            send_burst: 100,
            frame_rate_per_sec: 200.0,
            frame_burst: 400,
            ..GatewayConfig::default()
        };
        assert_eq!(refill_time(&config), Duration::from_secs(5));
        let never = GatewayConfig {
            send_rate_per_sec: 0.0,
            ..config
        };
        assert_eq!(refill_time(&never), LONGEST_KEEP);
    }
}
