//! When to try a failed notification again: exponential backoff with jitter, or the push
//! service's `Retry-After`, within the notification's 24 hours.

use std::time::Duration;

/// The retry schedule.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first retry's delay.
    pub base: Duration,
    /// The longest delay between two attempts.
    pub max: Duration,
    /// How long after its intent a notification is given up.
    pub max_age: Duration,
}

impl Backoff {
    /// When (ms) to try again after `attempts` failures (this one included), or `None` if
    /// that would be past the notification's age. A `Retry-After` the service gave is
    /// honoured as given (it knows its load); otherwise the delay is `base * 2^(attempts-1)`,
    /// capped at `max`, with full jitter in its upper half, so that a burst of failures
    /// (a push service's outage) does not come back as one burst.
    pub fn next(
        &self,
        attempts: u32,
        retry_after: Option<Duration>,
        created_at: i64,
        now: i64,
    ) -> Option<i64> {
        let delay = match retry_after {
            Some(after) => after,
            None => {
                let doubled = self
                    .base
                    .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
                let capped = doubled.min(self.max);
                let half = capped / 2;
                half + half.mul_f64(rand::random_range(0.0..=1.0))
            }
        };
        let at = now.saturating_add(ms(delay));
        (at <= created_at.saturating_add(ms(self.max_age))).then_some(at)
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(3600),
        max_age: Duration::from_secs(24 * 3600),
    };

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        for (attempts, low, high) in [(1, 500, 1000), (2, 1000, 2000), (5, 8000, 16_000)] {
            for _ in 0..50 {
                let at = B.next(attempts, None, 0, 0).expect("within the day");
                assert!((low..=high).contains(&at), "{attempts}: {at}");
            }
        }
        let at = B.next(30, None, 0, 0).expect("within the day");
        assert!((1_800_000..=3_600_000).contains(&at), "capped: {at}");
    }

    #[test]
    fn retry_after_is_honoured_and_nothing_goes_past_the_day() {
        let after = Some(Duration::from_secs(120));
        assert_eq!(B.next(1, after, 0, 1000), Some(121_000));
        let day = 24 * 3600 * 1000;
        assert_eq!(B.next(1, after, 0, day - 60_000), None, "past the day");
        assert_eq!(B.next(40, None, 0, day), None);
    }
}
