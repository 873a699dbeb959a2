//! The validated parameters of a `pairs` run: the bounds of the flags, and the server limits
//! the load would run into.

use serde::{Deserialize, Serialize};

use super::{LoadArgs, PaceArgs};
use crate::body;

/// Most messages one run may schedule (the bookkeeping costs two bytes each).
pub const MAX_MESSAGES: u64 = 200_000_000;
/// Longest run, seconds.
pub const MAX_DURATION_SECS: f64 = 3_600.0;
/// Longest grace period, seconds.
pub const MAX_GRACE_SECS: f64 = 600.0;
/// Most users one run may connect.
pub const MAX_USERS: usize = 1_000_000;
/// The frames a server accepts per socket per second by default (`Config::frame_rate_per_sec`).
const SERVER_FRAME_RATE: f64 = 200.0;
/// The default per-device send rate of `confab serve`.
const SERVER_DEFAULT_SEND_RATE: f64 = 20.0;

/// The validated parameters of one `pairs` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairsConfig {
    pub users: usize,
    /// Offered messages per second, all users together.
    pub rate: f64,
    pub duration_s: f64,
    pub body_bytes: usize,
    pub grace_s: f64,
    pub workers: usize,
    pub ack_interval_ms: u64,
    pub connect_concurrency: usize,
}

/// The checked flags of [`PaceArgs`]: what every open-loop run (`pairs`, `group`) needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Pace {
    pub(crate) duration_s: f64,
    pub(crate) body_bytes: usize,
    pub(crate) grace_s: f64,
    /// Before the scenario caps it at its units of work (pairs, groups).
    pub(crate) workers: usize,
    pub(crate) ack_interval_ms: u64,
    pub(crate) connect_concurrency: usize,
}

impl PaceArgs {
    /// Checks the flags and bounds a run at `rate` msgs/s in count and time.
    pub(crate) fn check(&self, rate: f64) -> Result<Pace, String> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be a positive number of messages per second".into());
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= MAX_DURATION_SECS)
        {
            return Err(format!(
                "--duration must be more than 0 and at most {MAX_DURATION_SECS} seconds"
            ));
        }
        if !(self.grace.is_finite() && self.grace >= 0.0 && self.grace <= MAX_GRACE_SECS) {
            return Err(format!("--grace must be 0 to {MAX_GRACE_SECS} seconds"));
        }
        if !(body::STAMP_LEN..=confab_protocol::MAX_BODY_BYTES).contains(&self.body) {
            return Err(format!(
                "--body must be {} to {} bytes",
                body::STAMP_LEN,
                confab_protocol::MAX_BODY_BYTES
            ));
        }
        let total = (rate * self.duration).round();
        if total < 1.0 {
            return Err("--rate × --duration schedules no message".into());
        }
        if total > MAX_MESSAGES as f64 {
            return Err(format!(
                "--rate × --duration schedules {total} messages; at most {MAX_MESSAGES} per run"
            ));
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers = self.workers.unwrap_or(cores);
        if workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        Ok(Pace {
            duration_s: self.duration,
            body_bytes: self.body,
            grace_s: self.grace,
            workers,
            ack_interval_ms: self.ack_interval,
            // All from one address: see `HANDSHAKES_PER_ADDRESS`.
            connect_concurrency: self
                .connect_concurrency
                .clamp(1, crate::connect::HANDSHAKES_PER_ADDRESS),
        })
    }
}

impl LoadArgs {
    /// Checks the flags and bounds the run in count and time.
    pub fn config(&self, rate: f64) -> Result<PairsConfig, String> {
        if self.users < 2 || !self.users.is_multiple_of(2) || self.users > MAX_USERS {
            return Err(format!(
                "--users must be an even number from 2 to {MAX_USERS}"
            ));
        }
        let pace = self.pace.check(rate)?;
        Ok(PairsConfig {
            users: self.users,
            rate,
            duration_s: pace.duration_s,
            body_bytes: pace.body_bytes,
            grace_s: pace.grace_s,
            workers: pace.workers.min(self.users / 2),
            ack_interval_ms: pace.ack_interval_ms,
            connect_concurrency: pace.connect_concurrency,
        })
    }
}

impl PairsConfig {
    /// The pace of this run, as its engine takes it.
    pub(crate) fn pace(&self) -> Pace {
        Pace {
            duration_s: self.duration_s,
            body_bytes: self.body_bytes,
            grace_s: self.grace_s,
            workers: self.workers,
            ack_interval_ms: self.ack_interval_ms,
            connect_concurrency: self.connect_concurrency,
        }
    }

    /// Sends each user makes per second.
    pub fn per_user_rate(&self) -> f64 {
        self.rate / self.users as f64
    }

    /// Notes for the user about server limits this load would run into.
    pub fn limit_notes(&self, spawned_send_rate: Option<f64>) -> Vec<String> {
        limit_notes(
            self.users,
            self.rate,
            self.duration_s,
            self.ack_interval_ms,
            spawned_send_rate,
        )
    }
}

/// Notes for the user about server limits that `senders` users sending `rate` msgs/s in all
/// for `duration_s`, and acking every `ack_interval_ms`, would run into.
pub(crate) fn limit_notes(
    senders: usize,
    rate: f64,
    duration_s: f64,
    ack_interval_ms: u64,
    spawned_send_rate: Option<f64>,
) -> Vec<String> {
    let mut notes = Vec::new();
    let per_user = rate / senders as f64;
    match spawned_send_rate {
        None if per_user > SERVER_DEFAULT_SEND_RATE => notes.push(format!(
            "each user sends {per_user:.1} msgs/s; a server at its default limit (20 msgs/s per \
             device, burst 100) answers the excess with rate_limited: start it with \
             `confab serve --send-rate {} --send-burst {}` or more",
            (per_user * 2.0).ceil(),
            ((per_user * 2.0).ceil() as u64).max(100)
        )),
        Some(limit) if per_user > limit => notes.push(format!(
            "each user sends {per_user:.1} msgs/s, above the spawned server's --server-send-rate {limit}"
        )),
        _ => {}
    }
    let acks = if ack_interval_ms > 0 {
        1000.0 / ack_interval_ms as f64
    } else {
        0.0
    };
    // A spawned server gets its frame limit raised with its send limit.
    if spawned_send_rate.is_none() && per_user + acks > SERVER_FRAME_RATE {
        let frames = (per_user + acks) * 2.0;
        notes.push(format!(
            "each socket would send {:.0} frames/s; a server at its default limit (200 \
             frames/s per socket, burst 400) answers the excess with rate_limited: start it \
             with `confab serve --frame-rate {} --frame-burst {}` or more",
            per_user + acks,
            frames.ceil(),
            (frames.ceil() as u64).max(400)
        ));
    }
    let total = (rate * duration_s).round() as u64;
    if total < senders as u64 {
        notes.push(format!(
            "only {total} messages are scheduled for {senders} users: some users never send"
        ));
    }
    notes
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn pace() -> PaceArgs {
        PaceArgs {
            duration: 2.0,
            body: 100,
            grace: 1.0,
            workers: Some(4),
            ack_interval: 1000,
            connect_concurrency: 8,
        }
    }

    pub(in crate::pairs) fn load(users: usize) -> LoadArgs {
        LoadArgs {
            users,
            pace: pace(),
        }
    }

    #[test]
    fn config_bounds_the_run() {
        let c = load(10).config(100.0).unwrap();
        assert_eq!(c.users, 10);
        assert_eq!(c.workers, 4);
        assert_eq!(
            load(4).config(100.0).unwrap().workers,
            2,
            "at most one worker per pair"
        );
        assert!(load(3).config(100.0).is_err(), "odd");
        assert!(load(0).config(100.0).is_err());
        assert!(load(10).config(0.0).is_err());
        assert!(load(10).config(f64::NAN).is_err());
        assert!(load(10).config(1e9).is_err(), "too many messages");
        let mut l = load(10);
        l.pace.body = 47;
        assert!(l.config(10.0).is_err());
        l.pace.body = 4097;
        assert!(l.config(10.0).is_err());
        l = load(10);
        l.pace.duration = 4000.0;
        assert!(l.config(10.0).is_err());
    }

    #[test]
    fn limit_notes_name_the_server_flags() {
        let c = load(10).config(1000.0).unwrap(); // 100 msgs/s per user
        let notes = c.limit_notes(None);
        assert!(notes.iter().any(|n| n.contains("--send-rate")), "{notes:?}");
        assert!(c.limit_notes(Some(1e6)).is_empty());
        let fast = load(2).config(1000.0).unwrap(); // 500 per user: over the frame limit
        assert!(
            fast.limit_notes(None)
                .iter()
                .any(|n| n.contains("200 frames/s") && n.contains("--frame-rate"))
        );
        assert!(
            !fast
                .limit_notes(Some(1e6))
                .iter()
                .any(|n| n.contains("frames/s")),
            "a spawned server's frame limit is raised with its send limit"
        );
        let slow = load(100).config(10.0).unwrap(); // 20 messages for 100 users
        assert!(
            slow.limit_notes(Some(1e6))
                .iter()
                .any(|n| n.contains("never send"))
        );
    }
}
