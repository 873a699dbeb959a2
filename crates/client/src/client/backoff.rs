//! The delay before a reconnect or a retried send.

use std::time::Duration;

use rand::RngExt;

/// Exponential backoff with jitter: attempt `n` waits between half of and the full
/// `min * 2^n`, capped at `max` and never below `min`. The jitter keeps many clients that
/// lost the same server from reconnecting in lockstep.
pub(super) fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let max = max.max(min);
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    let cap = min.saturating_mul(factor).min(max);
    let low = (cap / 2).max(min);
    if cap <= low {
        return cap;
    }
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(nanos(low)..=nanos(cap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(backoff(min, max, 0), min);
        for attempt in 1..40 {
            let d = backoff(min, max, attempt);
            let cap = (min * 2u32.saturating_pow(attempt.min(20))).min(max);
            assert!(d >= min && d <= max, "{attempt}: {d:?}");
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?} vs {cap:?}");
        }
        assert_eq!(backoff(min, Duration::ZERO, 3), min);
    }
}
