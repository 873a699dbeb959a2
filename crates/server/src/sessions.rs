//! Session lifetimes: a token expires `ttl` after its device was last used, and an expired
//! token is treated as revoked everywhere a token is checked (the API's caller, a socket's
//! `hello`, a socket's resync in a cluster).
//!
//! "Used" means an authenticated HTTP request or an open socket. Writing the time of every
//! request would put a store write on every request, so a device's `last_active` is written
//! only when the stored one is older than [`Sessions::touch_every`] (a tenth of the ttl, at
//! most a minute): by a request or `hello` that finds it stale, and for open sockets by a job
//! that touches every device with a socket on this node, in batches, once per interval
//! (`jobs::touch_sessions`), so the socket's own loop never writes. The stored time therefore
//! lags the last use by at most one interval, and a token may expire up to that much before
//! `ttl` after its very last use; never later.

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::Id;

use crate::store::{DeviceRecord, DeviceSession, MessageStore, StoreResult};
use crate::time::now_ms;

/// Longest time a device's use goes unrecorded: what the session list's `last_active` may
/// lag behind, and how often the open sockets' devices are touched.
const MAX_TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Devices touched per store write by [`Sessions::touch`]: the embedded store's single
/// writer takes other writes between batches instead of one long transaction.
const TOUCH_BATCH: usize = 1000;

/// The sessions' expiry rule over the store that holds them.
pub struct Sessions {
    store: Arc<dyn MessageStore>,
    ttl: Duration,
    ttl_ms: i64,
    touch_every_ms: i64,
}

impl Sessions {
    /// Sessions expiring `ttl` after their last use.
    pub fn new(store: Arc<dyn MessageStore>, ttl: Duration) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Sessions {
            store,
            ttl,
            ttl_ms: ms(ttl),
            touch_every_ms: ms(touch_interval(ttl)).max(1),
        }
    }

    /// How often a device's use is written at most, and how often the devices of open
    /// sockets are touched.
    pub fn touch_every(&self) -> Duration {
        touch_interval(self.ttl)
    }

    /// When a session last used at `last_active` expires (ms).
    pub fn expires_at(&self, last_active: i64) -> i64 {
        last_active.saturating_add(self.ttl_ms)
    }

    /// Whether a session last used at `last_active` is still valid at `now`.
    pub fn is_live(&self, last_active: i64, now: i64) -> bool {
        now < self.expires_at(last_active)
    }

    /// The live session holding this token, its use recorded if the stored one is stale.
    /// A failed write of the use does not refuse the request: the token was valid.
    pub async fn authenticate(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>> {
        let now = now_ms();
        let Some(mut session) = self.check_at(token_hash, now).await? else {
            return Ok(None);
        };
        if now.saturating_sub(session.last_active) >= self.touch_every_ms {
            match self.store.touch_devices(vec![session.device_id], now).await {
                Ok(()) => session.last_active = now,
                Err(e) => tracing::warn!(error = %e, "could not record a session's use"),
            }
        }
        Ok(Some(session))
    }

    /// The live session holding this token, without recording a use (a socket's periodic
    /// re-check: the socket's use is recorded by the touch job).
    pub async fn check(&self, token_hash: [u8; 32]) -> StoreResult<Option<DeviceSession>> {
        self.check_at(token_hash, now_ms()).await
    }

    async fn check_at(&self, token_hash: [u8; 32], now: i64) -> StoreResult<Option<DeviceSession>> {
        Ok(self
            .store
            .device_by_token(token_hash)
            .await?
            .filter(|s| self.is_live(s.last_active, now)))
    }

    /// `user`'s live devices, oldest first.
    pub async fn live_devices(&self, user: Id) -> StoreResult<Vec<DeviceRecord>> {
        let now = now_ms();
        let mut devices = self.store.devices(user).await?;
        devices.retain(|d| self.is_live(d.last_active, now));
        Ok(devices)
    }

    /// Records that these devices are in use now (their sockets are open).
    pub async fn touch(&self, devices: Vec<Id>) -> StoreResult<()> {
        let now = now_ms();
        for chunk in devices.chunks(TOUCH_BATCH) {
            self.store.touch_devices(chunk.to_vec(), now).await?;
        }
        Ok(())
    }
}

/// A tenth of the ttl, so that a session in use never comes near expiring, and at most
/// [`MAX_TOUCH_INTERVAL`].
fn touch_interval(ttl: Duration) -> Duration {
    (ttl / 10).min(MAX_TOUCH_INTERVAL)
}

/// Parses a session lifetime as `--session-ttl` takes it: one or more groups of a whole
/// number and a unit, `d`, `h`, `m` or `s` (`30d`, `12h`, `90m`, `45s`, `1h30m`), or a bare
/// number of seconds. It must be positive.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid session ttl {text:?}: expected e.g. 30d, 12h, 90m or 45s (a positive time)"
        )
    };
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|_| bad())?;
        return (secs > 0)
            .then(|| Duration::from_secs(secs))
            .ok_or_else(bad);
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = match rest.as_bytes().get(digits) {
            Some(b'd') => 86_400,
            Some(b'h') => 3_600,
            Some(b'm') => 60,
            Some(b's') => 1,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        rest = &rest[digits + 1..];
    }
    (total > 0)
        .then(|| Duration::from_secs(total))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse() {
        for (text, secs) in [
            ("30d", 30 * 86_400),
            ("12h", 12 * 3_600),
            ("90m", 90 * 60),
            ("45s", 45),
            ("1h30m", 5_400),
            ("1d1s", 86_401),
            ("3600", 3_600),
            (" 1h ", 3_600),
        ] {
            assert_eq!(parse_ttl(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in [
            "",
            "0",
            "0s",
            "d",
            "-1h",
            "+1h",
            "1.5h",
            "1w",
            "1 h",
            "h1",
            "1hx",
            "30dd",
            "99999999999999999999d",
            "213503982334602d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_default_is_the_one_the_flag_names() {
        // `confab serve --help` says "[default: 30d]".
        assert_eq!(
            Ok(crate::config::Config::default().session_ttl),
            parse_ttl("30d")
        );
    }

    #[test]
    fn touches_are_a_tenth_of_the_ttl_at_most_a_minute() {
        assert_eq!(
            touch_interval(Duration::from_secs(30 * 86_400)),
            Duration::from_secs(60)
        );
        assert_eq!(
            touch_interval(Duration::from_secs(1)),
            Duration::from_millis(100)
        );
    }
}
