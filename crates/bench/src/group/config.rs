//! The validated parameters of a `group` run.

use serde::{Deserialize, Serialize};

use super::GroupArgs;
use crate::pairs::MAX_USERS;

/// The most members a server allows in a group by default (`serve --max-group-members`).
pub(super) const SERVER_MAX_GROUP_MEMBERS: usize = 1024;

/// The validated parameters of one `group` run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub groups: usize,
    /// Members of each group, its owner included.
    pub members: usize,
    /// Members of each group with a socket: the senders and readers.
    pub online: usize,
    /// Offered messages per second, all groups together.
    pub rate: f64,
    pub duration_s: f64,
    pub body_bytes: usize,
    pub grace_s: f64,
    pub workers: usize,
    pub ack_interval_ms: u64,
    pub connect_concurrency: usize,
}

impl GroupConfig {
    /// Checks the flags and bounds the run in count and time.
    pub fn check(args: &GroupArgs) -> Result<GroupConfig, String> {
        if args.groups == 0 {
            return Err("--groups must be at least 1".into());
        }
        if args.members < 2 {
            return Err("--members must be at least 2 (a group has 2 or more)".into());
        }
        let online = args.online.unwrap_or(args.members);
        if online == 0 || online > args.members {
            return Err(format!(
                "--online must be 1 to --members ({})",
                args.members
            ));
        }
        if args.groups.saturating_mul(args.members) > MAX_USERS {
            return Err(format!(
                "--groups × --members is {} users; at most {MAX_USERS}",
                args.groups.saturating_mul(args.members)
            ));
        }
        let pace = args.pace.check(args.rate)?;
        Ok(GroupConfig {
            groups: args.groups,
            members: args.members,
            online,
            rate: args.rate,
            duration_s: pace.duration_s,
            body_bytes: pace.body_bytes,
            grace_s: pace.grace_s,
            // Each worker owns whole groups.
            workers: pace.workers.min(args.groups),
            ack_interval_ms: pace.ack_interval_ms,
            connect_concurrency: pace.connect_concurrency,
        })
    }

    /// Accounts the run needs: every member of every group is a user of its own.
    pub fn users(&self) -> usize {
        self.groups * self.members
    }

    /// Sockets the run holds: the online members.
    pub fn sockets(&self) -> usize {
        self.groups * self.online
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
        crate::pairs::limit_notes(
            self.sockets(),
            self.rate,
            self.duration_s,
            self.ack_interval_ms,
            spawned_send_rate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::PaceArgs;

    fn args(groups: usize, members: usize, online: Option<usize>) -> GroupArgs {
        GroupArgs {
            target: Default::default(),
            groups,
            members,
            online,
            rate: 100.0,
            pace: PaceArgs {
                duration: 2.0,
                body: 100,
                grace: 1.0,
                workers: Some(4),
                ack_interval: 1000,
                connect_concurrency: 8,
            },
            output: Default::default(),
        }
    }

    #[test]
    fn config_bounds_the_run() {
        let c = GroupConfig::check(&args(3, 10, None)).unwrap();
        assert_eq!((c.online, c.users(), c.sockets()), (10, 30, 30));
        assert_eq!(c.workers, 3, "at most one worker per group");
        let c = GroupConfig::check(&args(4, 1000, Some(200))).unwrap();
        assert_eq!((c.users(), c.sockets(), c.workers), (4000, 800, 4));
        assert!(GroupConfig::check(&args(0, 10, None)).is_err());
        assert!(GroupConfig::check(&args(3, 1, None)).is_err());
        assert!(GroupConfig::check(&args(3, 10, Some(0))).is_err());
        assert!(GroupConfig::check(&args(3, 10, Some(11))).is_err());
        assert!(GroupConfig::check(&args(2_000, 1_000, None)).is_err());
        let mut a = args(3, 10, None);
        a.rate = 0.0;
        assert!(GroupConfig::check(&a).is_err(), "the pace is checked too");
    }

    #[test]
    fn only_online_members_send() {
        let c = GroupConfig::check(&args(2, 100, Some(2))).unwrap(); // 25 msgs/s per sender
        let notes = c.limit_notes(None);
        assert!(notes.iter().any(|n| n.contains("--send-rate")), "{notes:?}");
        assert!(c.limit_notes(Some(1e6)).is_empty());
    }
}
