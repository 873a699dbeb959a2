//! What a `group` run measured ([`GroupReport`]), and how it prints.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::GroupConfig;
use crate::pairs::{disk_line, process_line};
use crate::report::{self, Table, fmt_counts, fmt_n};
use crate::stats::{LatencySummary, ProcessStats};

/// Everything one `group` run measured. A *delivery* is one message read by one online
/// member's socket: a message to a group with N members online is N deliveries, its
/// sender's own device included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub config: GroupConfig,
    pub server: String,
    pub spawned: bool,
    /// Random id of this run, in every `client_id` and body.
    pub run_id: u32,
    /// Seconds to create the groups over HTTP.
    pub setup_s: f64,
    /// Seconds to open the online members' sockets (connect, hello, catch-up to `synced`).
    pub connect_s: f64,
    /// Messages replayed to the sockets on connect (the groups' `created` events, and
    /// history of earlier runs on the same accounts).
    pub replayed: u64,
    /// Messages the schedule held.
    pub scheduled: u64,
    /// Messages written to a socket.
    pub sent: u64,
    /// Scheduled but never written.
    pub unsent: u64,
    /// Sends answered with `sent`.
    pub acked: u64,
    /// Sends answered with an `error` frame naming them.
    pub refused: u64,
    /// Deliveries the acked messages owe: acked × online members per group.
    pub expected: u64,
    /// Deliveries read (each message once per socket).
    pub delivered: u64,
    /// Of those, read before the schedule's end.
    pub delivered_in_window: u64,
    /// `sent` per second of the schedule's duration.
    pub sent_per_sec: f64,
    /// Deliveries per second from the schedule's start to the last delivery (at least the
    /// schedule's duration): the server's fan-out capacity once it falls behind.
    pub delivered_per_sec: f64,
    /// Seconds from the schedule's start to the last delivery.
    pub last_delivery_s: f64,
    /// Deliveries of acked messages not read by the end of the grace period.
    pub undelivered: u64,
    /// Written, but neither `sent` nor an `error` came back by the end of the grace period.
    pub unacked: u64,
    /// Deliveries read again (at or below a group `seq` the socket had read).
    pub duplicates: u64,
    /// Messages from outside this run, ignored.
    pub foreign: u64,
    pub errors: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    /// Each delivery's read − the intended send time (coordinated-omission corrected).
    pub latency_ms: LatencySummary,
    /// Each delivery's read − the sender's actual write.
    pub write_latency_ms: LatencySummary,
    /// The sender's read of `sent` − the intended send time.
    pub ack_latency_ms: LatencySummary,
    /// The sender's actual write − the intended send time: how far behind the bench was.
    pub send_lag_ms: LatencySummary,
    /// The spawned server's CPU, memory and writes over the run.
    pub server_process: Option<ProcessStats>,
    /// This bench process's CPU and memory over the run.
    pub bench_process: Option<ProcessStats>,
}

impl GroupReport {
    /// The spawned server's CPU per acked message and per delivery, µs.
    pub fn server_cpu_us(&self) -> Option<(f64, f64)> {
        let cpu = self.server_process.as_ref()?.cpu_secs * 1e6;
        (self.acked > 0 && self.delivered > 0)
            .then(|| (cpu / self.acked as f64, cpu / self.delivered as f64))
    }
}

impl fmt::Display for GroupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let mut t = Table::new(format!(
            "confab bench group: {} groups × {} members ({} online), {} msgs/s offered for {} s, {}-byte bodies",
            fmt_n(c.groups as u64),
            fmt_n(c.members as u64),
            fmt_n(c.online as u64),
            c.rate,
            c.duration_s,
            c.body_bytes
        ));
        t.row("server", report::fmt_server(&self.server, self.spawned));
        t.row(
            "setup",
            format!(
                "{} groups in {:.2} s; {} sockets in {:.2} s ({} workers)",
                fmt_n(c.groups as u64),
                self.setup_s,
                fmt_n((c.groups * c.online) as u64),
                self.connect_s,
                c.workers
            ),
        );
        t.row(
            "offered",
            format!(
                "{:.1} msgs/s, {:.1} deliveries/s",
                c.rate,
                c.rate * c.online as f64
            ),
        );
        t.row(
            "sent",
            format!(
                "{} of {} scheduled ({:.1} msgs/s)",
                fmt_n(self.sent),
                fmt_n(self.scheduled),
                self.sent_per_sec
            ),
        );
        t.row(
            "acked / refused",
            format!("{} / {}", fmt_n(self.acked), fmt_n(self.refused)),
        );
        t.row(
            "delivered",
            format!(
                "{} of {} deliveries: {:.1} deliveries/s ({} before the schedule's end, the last at {:.2} s)",
                fmt_n(self.delivered),
                fmt_n(self.expected),
                self.delivered_per_sec,
                fmt_n(self.delivered_in_window),
                self.last_delivery_s
            ),
        );
        t.row(
            "undelivered",
            format!(
                "{} deliveries (acked, not read within the {} s grace)",
                fmt_n(self.undelivered),
                c.grace_s
            ),
        );
        t.row("unacked", fmt_n(self.unacked));
        if self.unsent > 0 {
            t.row("unsent", fmt_n(self.unsent));
        }
        if self.duplicates > 0 || self.foreign > 0 {
            t.row(
                "duplicates/foreign",
                format!("{} / {}", fmt_n(self.duplicates), fmt_n(self.foreign)),
            );
        }
        t.row("errors", fmt_counts(&self.errors));
        t.row("disconnects", fmt_counts(&self.disconnects));
        t.row("latency", self.latency_ms.line());
        t.row("  measured from", "the intended send time, at every reader");
        t.row("latency from write", self.write_latency_ms.line());
        t.row("sent (ack) latency", self.ack_latency_ms.line());
        t.row("bench lag", self.send_lag_ms.line());
        if let Some(s) = &self.server_process {
            t.row("server", process_line(s));
        }
        if let Some((per_message, per_delivery)) = self.server_cpu_us() {
            t.row(
                "server CPU",
                format!("{per_message:.0} µs per message, {per_delivery:.1} µs per delivery"),
            );
        }
        if let Some(s) = &self.server_process {
            if let Some(written) = s.disk_written_mib {
                t.row("server disk", disk_line(written, self.acked));
            }
            if let Some(chars) = s.chars_written_mib {
                t.row(
                    "server write()s",
                    format!(
                        "{} (wchar: files, before the page cache)",
                        disk_line(chars, self.acked).replace(" toward the disk", "")
                    ),
                );
            }
        }
        if let Some(s) = &self.bench_process {
            t.row("bench", process_line(s));
        }
        write!(f, "{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_prints_deliveries_and_costs_and_round_trips() {
        let report = GroupReport {
            config: GroupConfig {
                groups: 2,
                members: 10,
                online: 5,
                rate: 100.0,
                duration_s: 1.0,
                body_bytes: 100,
                grace_s: 1.0,
                workers: 2,
                ..Default::default()
            },
            sent: 100,
            acked: 100,
            expected: 500,
            delivered: 500,
            server_process: Some(ProcessStats {
                pid: 9,
                cpu_secs: 0.05,
                disk_written_mib: Some(1.0),
                chars_written_mib: Some(2.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let table = report.to_string();
        assert!(
            table.contains("2 groups × 10 members (5 online)"),
            "{table}"
        );
        assert!(table.contains("500 of 500 deliveries"), "{table}");
        assert!(
            table.contains("100.0 msgs/s, 500.0 deliveries/s"),
            "{table}"
        );
        assert!(
            table.contains("500 µs per message, 100.0 µs per delivery"),
            "{table}"
        );
        assert!(
            table.contains("1.0 MiB written toward the disk: 10.2 KiB per message"),
            "{table}"
        );
        assert!(
            table.contains("2.0 MiB written: 20.5 KiB per message (wchar"),
            "{table}"
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: GroupReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
