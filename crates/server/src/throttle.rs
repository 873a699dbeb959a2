//! Throttling of failed logins and of registrations, and which address a request comes from.
//!
//! **The rule for logins.** Failed logins are counted per account (by default 10 a minute) and
//! per client address (3× that). An attempt is refused with 429 `rate_limited`, without
//! hashing, when its address is over its limit, or when the account is over its limit *and
//! this address has itself failed against this account within the last minute*. Any other
//! attempt has its password checked. So a guesser is held to the account's rate, while the
//! account's owner, from an address that has not failed against it, still logs in: nobody can
//! lock an account by failing against it. The cost of that promise is that every new address
//! an attacker brings gets one guess at an over-limit account per minute; the per-address limit
//! and the hashing queue ([`crate::auth`]) bound what those guesses cost the server.
//!
//! Counting is done before the hash, atomically with the check: an attempt takes its tokens
//! up front and gives them back when the password turns out right (or was never checked),
//! so concurrent guesses cannot slip past a limit together. An unknown username is counted
//! exactly as a known one, so the 429 does not tell which usernames exist either.
//!
//! **Limits are token buckets** of `limit` tokens refilled at `limit` a minute: a burst of
//! `limit` failures, then one every `60 / limit` seconds. `Retry-After` is the time until the
//! bucket that refused holds a token again. Each table is a map of bounded size (least
//! recently used entries go first), so a flood of new names or addresses costs bounded memory;
//! an entry pushed out forgets its count, which takes a flood of [`TABLE_CAPACITY`] distinct
//! failing keys. IPv6 addresses count by their /64, the block one host usually holds.
//!
//! The counts are this node's: a cluster of N nodes allows an account or an address at most
//! N times each limit (a load balancer that keeps a client on one node holds it to one).

use std::collections::hash_map::RandomState;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::{Error, Result};

/// Entries each table keeps at most (some tens of bytes each).
pub const TABLE_CAPACITY: usize = 65_536;
/// How long an address's failure against an account marks it as that account's guesser.
const WINDOW: Duration = Duration::from_secs(60);
/// The per-address login limit, as a multiple of the per-account one.
const ADDRESS_FACTOR: u32 = 3;

/// An account as the tables know it: a digest of its lower-cased name, so that any name a
/// client sends (valid or not, existing or not) takes the same few bytes.
type AccountKey = [u8; 16];

fn account_key(username: &str) -> AccountKey {
    let digest = Sha256::digest(username.to_ascii_lowercase().as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// What a client address is counted as, by every limit per address (these and the plain-HTTP
/// caps, `edge::places`): an IPv4 address (also one mapped into IPv6), or an IPv6 /64, which
/// a single client commonly holds whole and can pick addresses from at will.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from_bits(prefix))
        }
        v4 => v4,
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy (entries to its left could have
/// been written by the client). `forwarded` are the header's values in the order received.
/// Without a usable entry the nearest address known stands: an entry that is not an address
/// ends the walk there.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    let entries = forwarded
        .rev()
        .flat_map(|value| value.rsplit(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty());
    for entry in entries {
        let Some(ip) = parse_forwarded(entry) else {
            break;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// A token bucket: at most `limit` tokens, `limit` more a minute.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by key, bounded in number; an absent key has a full bucket.
struct Limiter<K> {
    limit: f64,
    buckets: LruCache<K, Bucket, RandomState>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(per_minute: u32) -> Self {
        Limiter {
            limit: f64::from(per_minute),
            buckets: LruCache::with_hasher(TABLE_CAPACITY, RandomState::new()),
        }
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        (bucket.tokens + elapsed * self.limit / 60.0).min(self.limit)
    }

    /// How long until `key` has a token, or `None` if it has one now.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let tokens = self.level(self.buckets.peek(key)?, now);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) * 60.0 / self.limit))
    }

    /// Takes a token if there is one.
    fn take(&mut self, key: &K, now: Instant) -> bool {
        let tokens = match self.buckets.peek(key) {
            Some(bucket) => self.level(bucket, now),
            None => self.limit,
        };
        let took = tokens >= 1.0;
        let left = if took { tokens - 1.0 } else { tokens };
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: left,
                at: now,
            },
        );
        took
    }

    /// Returns a token taken earlier.
    fn give_back(&mut self, key: &K, now: Instant) {
        let limit = self.limit;
        if let Some(bucket) = self.buckets.peek(key).copied() {
            let tokens = (self.level(&bucket, now) + 1.0).min(limit);
            self.buckets.insert(key.clone(), Bucket { tokens, at: now });
        }
    }
}

/// The counts of one node.
struct Tables {
    accounts: Limiter<AccountKey>,
    addresses: Limiter<IpAddr>,
    /// When an address last failed (or is trying) against an account.
    guessers: LruCache<(AccountKey, IpAddr), Instant, RandomState>,
    registrations: Limiter<IpAddr>,
}

/// Login and registration limits of one node, and who the client is.
pub struct Throttle {
    logins_on: bool,
    registrations_on: bool,
    trusted_proxies: Vec<IpNet>,
    tables: Mutex<Tables>,
}

impl Throttle {
    pub fn new(config: &AuthConfig) -> Self {
        let per_account = config.login_failures_per_minute;
        Throttle {
            logins_on: per_account > 0,
            registrations_on: config.registrations_per_minute > 0,
            trusted_proxies: config.trusted_proxies.clone(),
            tables: Mutex::new(Tables {
                accounts: Limiter::new(per_account),
                addresses: Limiter::new(per_account.saturating_mul(ADDRESS_FACTOR)),
                guessers: LruCache::with_hasher(TABLE_CAPACITY, RandomState::new()),
                registrations: Limiter::new(config.registrations_per_minute),
            }),
        }
    }

    /// The client address of a request from `peer` with these `X-Forwarded-For` values.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        client_address(peer, forwarded, &self.trusted_proxies)
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // The tables hold counts only: one left half-updated by a panic is still usable.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Before a password is checked: refuses a throttled attempt (429 with `Retry-After`), or
    /// counts it as a failure until [`LoginAttempt::succeeded`] or its drop says otherwise.
    pub fn login(&self, username: &str, client: IpAddr) -> Result<LoginAttempt<'_>> {
        self.login_at(username, client, Instant::now())
    }

    fn login_at(&self, username: &str, client: IpAddr, now: Instant) -> Result<LoginAttempt<'_>> {
        if !self.logins_on {
            return Ok(LoginAttempt {
                throttle: self,
                counted: None,
            });
        }
        let (account, address) = (account_key(username), address_key(client));
        let mut t = self.tables();
        let address_wait = t.addresses.wait(&address, now);
        let guessed_at = t
            .guessers
            .peek(&(account, address))
            .copied()
            .filter(|at| now.saturating_duration_since(*at) < WINDOW);
        let account_wait = match (t.accounts.wait(&account, now), guessed_at) {
            (Some(wait), Some(at)) => Some(wait.min(WINDOW - now.saturating_duration_since(at))),
            _ => None,
        };
        if let Some(wait) = address_wait.max(account_wait) {
            return Err(Error::throttled(
                "too many failed logins; retry later",
                wait,
            ));
        }
        let took_address = t.addresses.take(&address, now);
        // An over-limit account is still tried from an address that has not failed against it.
        let took_account = t.accounts.take(&account, now);
        let previous = t.guessers.insert((account, address), now);
        Ok(LoginAttempt {
            throttle: self,
            counted: Some(Counted {
                account,
                address,
                took_account,
                took_address,
                previous,
                at: now,
            }),
        })
    }

    /// A registration from `client`: refused with 429 and `Retry-After` past the limit. Every
    /// attempt counts, whether or not the account is then made.
    pub fn registration(&self, client: IpAddr) -> Result<()> {
        self.registration_at(client, Instant::now())
    }

    fn registration_at(&self, client: IpAddr, now: Instant) -> Result<()> {
        if !self.registrations_on {
            return Ok(());
        }
        let address = address_key(client);
        let mut t = self.tables();
        if let Some(wait) = t.registrations.wait(&address, now) {
            return Err(Error::throttled(
                "too many registrations; retry later",
                wait,
            ));
        }
        t.registrations.take(&address, now);
        Ok(())
    }
}

/// What a login attempt took from the tables.
struct Counted {
    account: AccountKey,
    address: IpAddr,
    took_account: bool,
    took_address: bool,
    previous: Option<Instant>,
    at: Instant,
}

/// A login attempt let through: counted as a failure unless it [`succeeded`](Self::succeeded)
/// or is dropped before its password was judged (an error, a full hashing queue).
#[must_use = "an attempt not marked failed is not counted"]
pub struct LoginAttempt<'a> {
    throttle: &'a Throttle,
    counted: Option<Counted>,
}

impl LoginAttempt<'_> {
    /// The password was wrong (or the user unknown): the attempt stays counted.
    pub fn failed(mut self) {
        self.counted = None;
    }

    /// The password was right: the attempt is not counted.
    pub fn succeeded(self) {}
}

impl Drop for LoginAttempt<'_> {
    fn drop(&mut self) {
        let Some(c) = self.counted.take() else {
            return;
        };
        let now = Instant::now().max(c.at);
        let mut t = self.throttle.tables();
        if c.took_account {
            t.accounts.give_back(&c.account, now);
        }
        if c.took_address {
            t.addresses.give_back(&c.address, now);
        }
        // Unless a later attempt of the same address has stamped it since.
        let pair = (c.account, c.address);
        if t.guessers.peek(&pair) == Some(&c.at) {
            match c.previous {
                Some(at) => {
                    t.guessers.insert(pair, at);
                }
                None => {
                    t.guessers.remove(&pair);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_minute: u32) -> Throttle {
        Throttle::new(&AuthConfig {
            login_failures_per_minute: per_minute,
            registrations_per_minute: per_minute,
            ..AuthConfig::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn retry_after(e: Error) -> Duration {
        match e {
            Error::RetryLater {
                code: confab_protocol::ErrorCode::RateLimited,
                retry_after,
                ..
            } => retry_after,
            other => panic!("not rate_limited: {other:?}"),
        }
    }

    #[test]
    fn an_account_is_held_to_its_rate_against_one_guesser() {
        let t = throttle(10);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..10 {
            t.login_at("bob", a, t0).unwrap().failed();
        }
        let wait = retry_after(t.login_at("BOB", a, t0).err().unwrap());
        // 10 a minute: one token every 6 s.
        assert_eq!(wait, Duration::from_secs(6));
        assert!(
            t.login_at("bob", a, t0 + Duration::from_millis(5_900))
                .is_err()
        );
        t.login_at("bob", a, t0 + Duration::from_secs(6))
            .unwrap()
            .failed();
        assert!(t.login_at("bob", a, t0 + Duration::from_secs(7)).is_err());
    }

    #[test]
    fn another_address_still_tries_an_over_limit_account() {
        let t = throttle(10);
        let t0 = Instant::now();
        for _ in 0..10 {
            t.login_at("bob", ip("10.0.0.1"), t0).unwrap().failed();
        }
        assert!(t.login_at("bob", ip("10.0.0.1"), t0).is_err());
        // The owner, elsewhere, gets the password checked: right, it is not counted...
        t.login_at("bob", ip("10.0.0.2"), t0).unwrap().succeeded();
        t.login_at("bob", ip("10.0.0.2"), t0).unwrap().succeeded();
        // ...wrong, this address is now a guesser too, until the account has a token again.
        t.login_at("bob", ip("10.0.0.2"), t0).unwrap().failed();
        let wait = retry_after(t.login_at("bob", ip("10.0.0.2"), t0).err().unwrap());
        assert!(wait <= Duration::from_secs(6), "{wait:?}");
    }

    #[test]
    fn an_address_is_limited_across_accounts() {
        let t = throttle(10);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for i in 0..30 {
            t.login_at(&format!("user{i}"), a, t0).unwrap().failed();
        }
        // 30 a minute: one token every 2 s; for any account, even a fresh one.
        assert_eq!(
            retry_after(t.login_at("fresh", a, t0).err().unwrap()),
            Duration::from_secs(2)
        );
        assert!(t.login_at("fresh", ip("10.0.0.2"), t0).is_ok());
    }

    #[test]
    fn successes_and_unjudged_attempts_are_not_counted() {
        let t = throttle(2);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..100 {
            t.login_at("bob", a, t0).unwrap().succeeded();
            drop(t.login_at("bob", a, t0).unwrap());
        }
        t.login_at("bob", a, t0).unwrap().failed();
        t.login_at("bob", a, t0).unwrap().failed();
        assert!(t.login_at("bob", a, t0).is_err());
    }

    #[test]
    fn concurrent_guesses_cannot_pass_together() {
        let t = throttle(3);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        // Five attempts in flight at once: three fit, the others are refused up front.
        let held: Vec<_> = (0..5).map(|_| t.login_at("bob", a, t0)).collect();
        assert_eq!(held.iter().filter(|r| r.is_ok()).count(), 3);
        for attempt in held.into_iter().flatten() {
            attempt.failed();
        }
    }

    #[test]
    fn zero_turns_the_limits_off() {
        let t = throttle(0);
        let t0 = Instant::now();
        for _ in 0..1000 {
            t.login_at("bob", ip("10.0.0.1"), t0).unwrap().failed();
            t.registration_at(ip("10.0.0.1"), t0).unwrap();
        }
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let t = throttle(30);
        let t0 = Instant::now();
        for _ in 0..30 {
            t.registration_at(ip("10.0.0.1"), t0).unwrap();
        }
        assert_eq!(
            retry_after(t.registration_at(ip("10.0.0.1"), t0).err().unwrap()),
            Duration::from_secs(2)
        );
        t.registration_at(ip("10.0.0.2"), t0).unwrap();
        t.registration_at(ip("10.0.0.1"), t0 + Duration::from_secs(2))
            .unwrap();
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let t = throttle(1);
        let t0 = Instant::now();
        t.login_at("a", ip("2001:db8:1:2::1"), t0).unwrap().failed();
        t.login_at("b", ip("2001:db8:1:2::2"), t0).unwrap().failed();
        t.login_at("c", ip("2001:db8:1:2:ffff::3"), t0)
            .unwrap()
            .failed();
        assert!(t.login_at("d", ip("2001:db8:1:2::4"), t0).is_err());
        assert!(t.login_at("d", ip("2001:db8:1:3::4"), t0).is_ok());
    }

    #[test]
    fn the_tables_are_bounded() {
        let t = throttle(10);
        let t0 = Instant::now();
        for i in 0..u32::try_from(TABLE_CAPACITY + 1000).unwrap() {
            let a = IpAddr::from(i.to_be_bytes());
            t.login_at(&i.to_string(), a, t0).unwrap().failed();
        }
        let tables = t.tables();
        assert_eq!(tables.accounts.buckets.len(), TABLE_CAPACITY);
        assert_eq!(tables.addresses.buckets.len(), TABLE_CAPACITY);
        assert_eq!(tables.guessers.len(), TABLE_CAPACITY);
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted = [
            "10.0.0.0/8".parse::<IpNet>().unwrap(),
            IpNet::from(ip("::1")),
        ];
        let peer = ip("10.1.1.1");
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(ip("203.0.113.9"), ["1.2.3.4"].into_iter(), &trusted),
            ip("203.0.113.9")
        );
        // The rightmost entry that is not a trusted proxy, over several headers.
        assert_eq!(
            client_address(
                peer,
                ["6.6.6.6, 1.2.3.4", "10.2.2.2 , 10.3.3.3"].into_iter(),
                &trusted
            ),
            ip("1.2.3.4")
        );
        // No header: the proxy itself. Only proxies: the farthest one.
        assert_eq!(client_address(peer, std::iter::empty(), &trusted), peer);
        assert_eq!(
            client_address(peer, ["10.9.9.9, 10.8.8.8"].into_iter(), &trusted),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the nearest address known; ports are allowed.
        assert_eq!(
            client_address(peer, ["1.2.3.4, junk"].into_iter(), &trusted),
            peer
        );
        assert_eq!(
            client_address(peer, ["[2001:db8::1]:443"].into_iter(), &trusted),
            ip("2001:db8::1")
        );
        // A v4 peer seen through a v6 socket is the v4 address.
        assert_eq!(
            client_address(ip("::ffff:10.1.1.1"), ["5.5.5.5"].into_iter(), &trusted),
            ip("5.5.5.5")
        );
    }
}
