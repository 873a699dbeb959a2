//! Per-socket rate limits.

use std::time::Instant;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(20.0, 100);
        b.last = t0;
        assert!((0..100).all(|_| b.take_at(t0)));
        assert!(!b.take_at(t0));
        // 20/s: one token every 50 ms.
        assert!(b.take_at(t0 + Duration::from_millis(50)));
        assert!(!b.take_at(t0 + Duration::from_millis(60)));
        // A client at exactly 20/s after its burst is never limited.
        let mut t = t0 + Duration::from_millis(60);
        for _ in 0..1000 {
            t += Duration::from_millis(50);
            assert!(b.take_at(t));
        }
    }
}
