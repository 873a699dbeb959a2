//! The validated parameters of a `push` run.

use serde::{Deserialize, Serialize};

use super::PushArgs;
use crate::pairs::MAX_USERS;

/// Up to this many messages in a phase, every notification is decrypted.
const DECRYPT_ALL_UP_TO: u64 = 1_000;
/// Longest wait for the notifications after the schedule's end, seconds.
const MAX_PUSH_WAIT_SECS: f64 = 3_600.0;

/// The validated parameters of one `push` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushConfig {
    /// Users with a socket, who send.
    pub senders: usize,
    /// Users with one device subscribed to Web Push and no socket, who receive.
    pub recipients: usize,
    /// Offered messages per second, all senders together.
    pub rate: f64,
    pub duration_s: f64,
    pub body_bytes: usize,
    pub grace_s: f64,
    /// Seconds after the schedule's end to wait for the notifications.
    pub push_wait_s: f64,
    /// Every this-many-th notification is decrypted and checked (1: all of them).
    pub decrypt_every: u64,
    /// Whether the baseline phase runs: the same load to recipients without a subscription.
    pub baseline: bool,
    pub workers: usize,
    pub ack_interval_ms: u64,
    pub connect_concurrency: usize,
}

impl PushConfig {
    /// Checks the flags and bounds the run in count and time.
    pub fn check(args: &PushArgs) -> Result<PushConfig, String> {
        if args.senders == 0 {
            return Err("--senders must be at least 1".into());
        }
        if args.recipients == 0 {
            return Err("--recipients must be at least 1".into());
        }
        let pace = args.pace.check(args.rate)?;
        let users = args
            .senders
            .saturating_add(args.recipients.saturating_mul(2));
        if users > MAX_USERS {
            return Err(format!(
                "--senders + 2 × --recipients is {users} users; at most {MAX_USERS}"
            ));
        }
        if !(args.push_wait.is_finite()
            && args.push_wait > 0.0
            && args.push_wait <= MAX_PUSH_WAIT_SECS)
        {
            return Err(format!(
                "--push-wait must be more than 0 and at most {MAX_PUSH_WAIT_SECS} seconds"
            ));
        }
        if args.decrypt_every == 0 {
            return Err("--decrypt-every must be at least 1".into());
        }
        let scheduled = (args.rate * pace.duration_s).round() as u64;
        Ok(PushConfig {
            senders: args.senders,
            recipients: args.recipients,
            rate: args.rate,
            duration_s: pace.duration_s,
            body_bytes: pace.body_bytes,
            grace_s: pace.grace_s,
            push_wait_s: args.push_wait,
            decrypt_every: if scheduled <= DECRYPT_ALL_UP_TO {
                1
            } else {
                args.decrypt_every
            },
            baseline: !args.no_baseline,
            workers: pace.workers.min(args.senders),
            ack_interval_ms: pace.ack_interval_ms,
            connect_concurrency: pace.connect_concurrency,
        })
    }

    /// Accounts the run needs: the senders, the recipients with a subscription, and as many
    /// again without one for the baseline.
    pub fn users(&self) -> usize {
        self.senders + self.recipients * if self.baseline { 2 } else { 1 }
    }

    /// The pace of this run, as the engine takes it.
    pub(crate) fn pace(&self) -> crate::pairs::Pace {
        crate::pairs::Pace {
            duration_s: self.duration_s,
            body_bytes: self.body_bytes,
            grace_s: self.grace_s,
            workers: self.workers,
            ack_interval_ms: self.ack_interval_ms,
            connect_concurrency: self.connect_concurrency,
        }
    }

    /// Notes for the user about server limits this load would run into.
    pub fn limit_notes(&self, spawned_send_rate: Option<f64>) -> Vec<String> {
        let mut notes = crate::pairs::limit_notes(
            self.senders,
            self.rate,
            self.duration_s,
            self.ack_interval_ms,
            spawned_send_rate,
        );
        let total = (self.rate * self.duration_s).round() as u64;
        if total < self.recipients as u64 {
            notes.push(format!(
                "only {total} messages are scheduled for {} recipients: some get none",
                self.recipients
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::PaceArgs;

    pub(crate) fn args(senders: usize, recipients: usize, rate: f64) -> PushArgs {
        PushArgs {
            target: Default::default(),
            senders,
            recipients,
            rate,
            push_wait: 30.0,
            decrypt_every: 100,
            no_baseline: false,
            pace: PaceArgs {
                duration: 10.0,
                body: 100,
                grace: 5.0,
                workers: Some(2),
                ack_interval: 1000,
                connect_concurrency: 8,
            },
            output: Default::default(),
        }
    }

    #[test]
    fn config_bounds_the_run() {
        let c = PushConfig::check(&args(100, 1000, 1000.0)).unwrap();
        assert_eq!(c.users(), 2100, "senders and two sets of recipients");
        assert_eq!(c.decrypt_every, 100);
        assert!(c.baseline);
        let mut a = args(100, 1000, 1000.0);
        a.no_baseline = true;
        assert_eq!(PushConfig::check(&a).unwrap().users(), 1100);
        assert_eq!(
            PushConfig::check(&args(1, 10, 50.0)).unwrap().workers,
            1,
            "at most one worker per sender"
        );
        assert!(PushConfig::check(&args(0, 10, 50.0)).is_err());
        assert!(PushConfig::check(&args(10, 0, 50.0)).is_err());
        assert!(
            PushConfig::check(&args(10, 10, 0.0)).is_err(),
            "the pace too"
        );
        assert!(PushConfig::check(&args(10, 600_000, 50.0)).is_err());
        let mut a = args(10, 10, 50.0);
        a.push_wait = 0.0;
        assert!(PushConfig::check(&a).is_err());
        a.push_wait = 1.0;
        a.decrypt_every = 0;
        assert!(PushConfig::check(&a).is_err());
    }

    #[test]
    fn a_small_run_decrypts_every_notification() {
        // 50 msgs/s for 10 s: 500 notifications.
        assert_eq!(
            PushConfig::check(&args(2, 10, 50.0)).unwrap().decrypt_every,
            1
        );
    }

    #[test]
    fn notes_name_recipients_left_without_messages() {
        let c = PushConfig::check(&args(10, 1000, 50.0)).unwrap();
        let notes = c.limit_notes(Some(1e6));
        assert!(
            notes.iter().any(|n| n.contains("some get none")),
            "{notes:?}"
        );
        let c = PushConfig::check(&args(100, 1000, 1000.0)).unwrap();
        assert!(c.limit_notes(Some(1e6)).is_empty());
    }
}
